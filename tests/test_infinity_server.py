#!/usr/bin/env python3
"""tests/test_infinity_server.py — `varserve serve` with an Infinity model (text to image): the
tiny reference-computed Infinity fixture with a random T5 encoder of its text width and the
fixtures' SentencePiece model. Requests that arrive together run as one batch, and each image is
the PNG `varserve generate` writes for the same prompt and seed, byte for byte; the OpenAI endpoint
takes the prompt as text; fields of the other family are refused naming what to send; a missing or
mismatched encoder stops start-up with exit 2 naming the key; the playground (a real browser, as in
test_openai.py) takes a prompt.
Needs python3; run by `make test` with VARSERVE_BIN=build/varserve."""
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from browser import chromium, close_page, open_page, wait_finished  # noqa: E402
from st_py import write_random_t5  # noqa: E402
from tally import Server, check, finish, http  # noqa: E402

BIN = os.environ.get("VARSERVE_BIN", "build/varserve")
INF = "tests/fixtures/infinity-tiny/model.safetensors"
SPM = "tests/fixtures/t5-tiny/spiece.model"
TINY = "tests/fixtures/tiny/model.safetensors"
T5_64 = "tests/fixtures/t5-tiny/model.safetensors"
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build/test-artifacts")

PROMPTS = ["a red fox in the snow", "an oil painting of the moon", "a bowl of ramen",
           "the number seven", "a lighthouse at dusk", "two cats"]


def raw_post(url, data, timeout=120):
    """(status, body) of a POST of these bytes as JSON."""
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post(base, path, body, timeout=120):
    return raw_post(base + path, json.dumps(body).encode(), timeout)


def cli_png(d, prompt, seed, n=1):
    """What `varserve generate` writes for the prompt (n times, seeds seed..seed+n-1)."""
    out = os.path.join(d, f"cli-{abs(hash((prompt, seed)))}")
    args = [BIN, "generate", "--model", INF, "--t5", T5, "--spiece", SPM, "--seed", str(seed), "--out", out,
            "--backend", "cpu"]
    for _ in range(n):
        args += ["--prompt", prompt]
    p = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        return [None] * n
    return [open(f"{out}-{i}.png", "rb").read() for i in range(n)]


def error(raw):
    try:
        return json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        return {}


def start_fails(d, name, *args):
    cfg = os.path.join(d, f"{name}.json")
    with open(cfg, "w") as f:
        f.write("{}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VARSERVE_")}
    p = subprocess.run([BIN, "serve", "--config", cfg, "--host", "127.0.0.1", "--port", "0", *args],
                       capture_output=True, text=True, timeout=120, env=env)
    return p.returncode, p.stdout + p.stderr


def run_browser(base, d):
    """The playground on a text-to-image model: a prompt box instead of the classes; a request from
    the URL hash draws the images /generate gives."""
    exe, why = chromium()
    if not exe:
        print(f"skip the browser checks: {why}")
        return
    p, cdp = open_page(exe, base + "/#prompt=a%20lighthouse%20at%20dusk&seed=3&n=2", d)
    try:
        if not check("chromium starts with DevTools", cdp is not None):
            return
        wait_finished(cdp)
        ds = json.loads(cdp.eval("JSON.stringify(document.body.dataset)") or "{}")
        shown = cdp.eval("['class-box', 'prompt-box', 'tau-box', 'kv-box', 'previews-box']"
                         ".map(id => document.getElementById(id).offsetParent !== null)")
        check("playground: the prompt and tau shown, the class, KV policy and previews hidden",
              shown == [False, True, True, False, False], shown)
        srcs = cdp.eval("[...document.querySelectorAll('figure img')].map(i => i.src)") or []
        pngs = [base64.b64decode(x.split(",", 1)[1]) for x in srcs if x.startswith("data:image/png;base64,")]
        want = cli_png(d, "a lighthouse at dusk", 3, 2)
        check("playground: a prompt from the URL draws the two images generate writes for it",
              ds.get("images") == "2" and ds.get("input") == "prompt" and pngs == want, (ds, len(pngs)))
        os.makedirs(ARTIFACTS, exist_ok=True)
        shot = os.path.join(ARTIFACTS, "playground-infinity.png")
        with open(shot, "wb") as f:
            f.write(base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"]))
    finally:
        close_page(p)


def main():
    global T5
    with tempfile.TemporaryDirectory() as d:
        T5 = os.path.join(d, "t5-256.safetensors")
        write_random_t5(T5, 256, 500)
        srv = Server(BIN, d, "inf", "--model", INF, "--t5", T5, "--spiece", SPM, "--backend", "cpu",
                     "--max-batch-images", "4")
        if not check("an Infinity server starts", srv.base is not None, srv.text()):
            srv.stop()
            finish()
        st, raw = http("GET", srv.base + "/info")
        info = json.loads(raw) if st == 200 else {}
        m = info.get("model", {})
        check("/info: family infinity, input prompt, 256 px, 7 scales, tau among the defaults",
              m.get("family") == "infinity" and m.get("input") == "prompt" and m.get("image_size") == 256 and
              len(m.get("patch_nums", [])) == 7 and info.get("defaults", {}).get("tau") == 1, raw[:600])

        # six requests at once, one of them two images: batches of up to 4, in lockstep
        results = {}

        def one(i):
            body = {"prompt": PROMPTS[i], "seed": 10 + i, "n": 2 if i == 3 else 1, "timeout_ms": 600000}
            results[i] = post(srv.base, "/generate", body, timeout=600)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = [results[i][0] for i in range(len(PROMPTS))]
        check("six concurrent prompt requests: all 200", codes == [200] * len(PROMPTS), codes)
        same = True
        for i in range(len(PROMPTS)):
            if results[i][0] != 200:
                same = False
                continue
            res = json.loads(results[i][1])
            got = [base64.b64decode(im["b64_json"]) for im in res["data"]]
            same = same and res.get("prompt") == PROMPTS[i] and "class_label" not in res
            want = cli_png(d, PROMPTS[i], 10 + i, 2 if i == 3 else 1)
            same = same and got == want
        check("each served image is the PNG varserve generate writes for its prompt and seed (batched or not)",
              same)
        vals, _ = srv.metrics()
        rows, steps = vals.get("varserve_batch_rows_sum", 0), vals.get("varserve_batch_rows_count", 0)
        check("the images ran in batches: more than one image a step on average (7 images, 7 scales each)",
              steps > 0 and rows / steps > 2 and steps < 7 * 7, f"{rows} rows in {steps} steps")
        check("images counted", vals.get("varserve_images_generated_total") == 7, vals.get("varserve_images_generated_total"))

        # PNG response, and OpenAI's Images API with the prompt as text
        st, png = post(srv.base, "/generate", {"prompt": PROMPTS[0], "seed": 10, "response_format": "png"})
        check("response_format png: the same image", st == 200 and png == cli_png(d, PROMPTS[0], 10)[0], st)
        st, raw = post(srv.base, "/v1/images/generations", {"prompt": PROMPTS[1], "seed": 11, "model": "model"})
        ok = st == 200 and base64.b64decode(json.loads(raw)["data"][0]["b64_json"]) == cli_png(d, PROMPTS[1], 11)[0]
        check("/v1/images/generations: the prompt is the text; the same image", ok, raw[:300])
        st, raw = post(srv.base, "/generate", {"prompt": PROMPTS[2], "seed": 5, "tau": 0.5, "cfg_scale": 1.5,
                                               "top_k": 1})
        check("tau, cfg_scale and top_k are accepted", st == 200, raw[:300])

        # the other family's fields, and bad prompts
        cases = [({"class_label": 3}, "class_label", "prompt"),
                 ({}, "prompt", "required"),
                 ({"prompt": ""}, "prompt", "non-empty"),
                 ({"prompt": 7}, "prompt", "string"),
                 ({"prompt": "x" * 3000}, "prompt", "limit"),
                 ({"prompt": "a cat", "tau": 0}, "tau", "temperature"),
                 ({"prompt": "a cat", "kv_policy": "scalekv"}, "kv_policy", "Infinity"),
                 ({"prompt": "a cat", "stream": True}, "stream", "Infinity"),
                 ({"prompt": "a cat", "top_k": 3}, "top_k", "0..2")]
        for body, param, words in cases:
            st, raw = post(srv.base, "/generate", body)
            e = error(raw)
            check(f"400 naming {param} for {json.dumps(body)[:60]}",
                  st == 400 and e.get("param") == param and words in e.get("message", ""), raw[:300])
        raw_body = b'{"prompt":"caf\xe9"}'
        st, raw = raw_post(srv.base + "/generate", raw_body)
        e = error(raw)
        check("a prompt that is not UTF-8: 400 naming prompt", st == 400 and e.get("param") == "prompt", raw[:300])
        run_browser(srv.base, d)
        check("SIGTERM exits 0", srv.stop() == 0, srv.text())

        # a VAR server refuses Infinity's fields; start-up refuses a missing or mismatched encoder
        var = Server(BIN, d, "var", "--model", TINY, "--backend", "cpu")
        if check("a VAR server starts", var.base is not None, var.text()):
            st, raw = post(var.base, "/generate", {"prompt": "a cat"})
            e = error(raw)
            check("VAR: prompt on /generate is 400 naming class_label",
                  st == 400 and e.get("param") == "prompt" and "class_label" in e.get("message", ""), raw[:300])
            st, raw = post(var.base, "/generate", {"class_label": 1, "tau": 0.5})
            check("VAR: tau is 400", st == 400 and error(raw).get("param") == "tau", raw[:300])
        check("SIGTERM exits 0 (VAR)", var.stop() == 0, var.text())
        rc, out = start_fails(d, "no-t5", "--model", INF, "--spiece", SPM, "--backend", "cpu")
        check("an Infinity model without t5: exit 2 naming 't5'", rc == 2 and "'t5'" in out, (rc, out[-500:]))
        rc, out = start_fails(d, "t5-64", "--model", INF, "--t5", T5_64, "--spiece", SPM, "--backend", "cpu")
        check("an encoder of another width: exit 2 naming both widths",
              rc == 2 and "64-wide" in out and "reads 256" in out, (rc, out[-500:]))
        rc, out = start_fails(d, "var-t5", "--model", TINY, "--t5", T5, "--backend", "cpu")
        check("t5 with a VAR model: exit 2 naming the keys", rc == 2 and "'t5'" in out, (rc, out[-500:]))
    finish()


if __name__ == "__main__":
    main()
