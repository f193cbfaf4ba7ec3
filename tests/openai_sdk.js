// tests/openai_sdk.js — the official OpenAI Node SDK against a running varserve, driven by
// tests/test_openai.py: OPENAI_MODULE is the installed `openai` package, VARSERVE_URL the server
// (the SDK's baseURL is VARSERVE_URL + "/v1"), OPENAI_API_KEY the server's api_key. Prints one
// JSON object with what the SDK returned; the Python side asserts on it.
"use strict";
const OpenAI = require(process.env.OPENAI_MODULE);

async function main() {
  const client = new OpenAI({ baseURL: process.env.VARSERVE_URL + "/v1", apiKey: process.env.OPENAI_API_KEY });
  const out = {};
  const models = await client.models.list();
  out.models = models.data.map((m) => m.id);
  const model = out.models[0];
  const plain = await client.images.generate({ model, prompt: "3", n: 2, seed: 5, size: "256x256" });
  out.plain = { created: plain.created, b64: plain.data.map((d) => d.b64_json), usage: plain.usage };
  const stream = await client.images.generate({ model, prompt: "3", n: 1, seed: 5, stream: true, partial_images: 3 });
  out.events = [];
  for await (const ev of stream)
    out.events.push({ type: ev.type, partial_image_index: ev.partial_image_index, image_index: ev.image_index,
                      scale: ev.scale, b64: ev.b64_json, usage: ev.usage });
  try {
    const late = await client.images.generate({ prompt: "3", n: 4, stream: true, partial_images: 3, timeout_ms: 1 });
    for await (const ev of late) void ev;
    out.late = "no error";
  } catch (e) {
    out.late = { code: e.code, type: e.type };
  }
  try {
    await client.images.generate({ model: "dall-e-3", prompt: "3" });
    out.wrong_model = "no error";
  } catch (e) {
    out.wrong_model = { status: e.status, code: e.code, param: e.param, message: e.message };
  }
  try {
    await new OpenAI({ baseURL: process.env.VARSERVE_URL + "/v1", apiKey: "wrong" }).images.generate({ prompt: "3" });
    out.wrong_key = "no error";
  } catch (e) {
    out.wrong_key = { status: e.status, code: e.code };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((e) => { console.error(e); process.exit(1); });
