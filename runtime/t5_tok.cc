/* runtime/t5_tok.cc — see t5_tok.h. The only C++ in the library outside the emulated device:
 * SentencePiece has no C API. Nothing thrown crosses into C (SentencePiece reports through its
 * Status; allocation failures are caught here). */
#include "runtime/t5_tok.h"

#include <sentencepiece_processor.h>

#include <new>
#include <string>
#include <vector>

extern "C" {
#include "common/json_text.h"
}

struct vs_rt_t5_tok {
    sentencepiece::SentencePieceProcessor sp;
    int eos, pad;
};

extern "C" vs_status vs_rt_t5_tok_load(const char *path, vs_rt_t5_tok **out, vs_err *err)
{
    vs_rt_t5_tok *t = new (std::nothrow) vs_rt_t5_tok;
    if (!t)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory for the tokenizer");
    try {
        const auto st = t->sp.Load(path);
        if (!st.ok()) {
            bool missing = st.code() == sentencepiece::util::StatusCode::kNotFound;
            vs_status code = missing ? VS_ERR_IO : VS_ERR_INVALID;
            vs_status r = vs_err_set(err, code, "cannot load the T5 tokenizer '%s': %s", path, st.ToString().c_str());
            delete t;
            return r;
        }
    } catch (const std::bad_alloc &) {
        delete t;
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory loading the tokenizer '%s'", path);
    }
    t->eos = t->sp.eos_id();
    t->pad = t->sp.pad_id();
    if (t->eos < 0 || t->pad < 0) {
        const char *which = t->eos < 0 ? "</s>" : "<pad>";
        delete t;
        return vs_err_set(err, VS_ERR_INVALID,
                          "the tokenizer '%s' has no %s piece: T5 needs both </s> and <pad> (train it with "
                          "eos_id and pad_id set)",
                          path, which);
    }
    *out = t;
    return VS_OK;
}

extern "C" void vs_rt_t5_tok_free(vs_rt_t5_tok *t) { delete t; }

extern "C" int vs_rt_t5_tok_size(const vs_rt_t5_tok *t) { return t->sp.GetPieceSize(); }

extern "C" vs_status vs_rt_t5_tokenize(const vs_rt_t5_tok *t, const char *text, size_t len, int max_len,
                                       int32_t *ids, int *n_valid, vs_err *err)
{
    if (max_len < 1)
        return vs_err_set(err, VS_ERR_INVALID, "max_len must be at least 1 (room for </s>), got %d", max_len);
    size_t bad = vs_utf8_invalid_at(text, len);
    if (bad < len)
        return vs_err_set(err, VS_ERR_INVALID, "the prompt is not valid UTF-8 at byte %zu", bad);
    std::vector<int> pieces;
    try {
        const auto st = t->sp.Encode(std::string(text, len), &pieces);
        if (!st.ok())
            return vs_err_set(err, VS_ERR_INVALID, "the tokenizer refused the prompt: %s", st.ToString().c_str());
    } catch (const std::bad_alloc &) {
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory tokenizing a prompt of %zu bytes", len);
    }
    int keep = (int)pieces.size() < max_len - 1 ? (int)pieces.size() : max_len - 1;
    for (int i = 0; i < keep; i++)
        ids[i] = pieces[(size_t)i];
    ids[keep] = t->eos;
    for (int i = keep + 1; i < max_len; i++)
        ids[i] = t->pad;
    *n_valid = keep + 1;
    return VS_OK;
}
