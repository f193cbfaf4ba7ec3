/* runtime/t5_tok.h — T5's tokenizer: a SentencePiece model (spiece.model) and the rule Infinity's
 * prompts go through (Hugging Face's T5TokenizerFast with legacy=True, max_length, truncation,
 * padding to max_length).
 *
 * The rule: the prompt's pieces as SentencePiece encodes it (its own normalisation: NFKC, spaces
 * collapsed and trimmed, "▁" before every word; pieces never cross a word, so this equals the
 * fast tokenizer's per-word encoding), the first max_len − 1 kept, the model's </s> id appended,
 * then its <pad> id up to max_len. Unknown characters are the model's <unk>, consecutive ones
 * fused. What differs from T5TokenizerFast: its 100 added "<extra_id_N>" tokens are not
 * recognised in the text (Infinity's prompts do not use them).
 *
 * A thin C layer over SentencePiece's C++ library (libsentencepiece, Debian's package). A
 * tokenizer is immutable after load; vs_rt_t5_tokenize may run on any thread. */
#ifndef VS_RT_T5_TOK_H
#define VS_RT_T5_TOK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "common/status.h"

typedef struct vs_rt_t5_tok vs_rt_t5_tok;

/* Loads spiece.model. VS_ERR_IO (cannot read it), VS_ERR_INVALID (not a SentencePiece model, or
 * one without </s> and <pad>), VS_ERR_NOMEM. */
vs_status vs_rt_t5_tok_load(const char *path, vs_rt_t5_tok **out, vs_err *err);
void vs_rt_t5_tok_free(vs_rt_t5_tok *t);

/* The model's piece count (its ids are 0..count − 1). */
int vs_rt_t5_tok_size(const vs_rt_t5_tok *t);

/* ids[0..max_len) for `text` (UTF-8, `len` bytes) by the rule above; *n_valid = the pieces kept
 * plus the </s> (1..max_len). VS_ERR_INVALID: max_len < 1, or text that is not valid UTF-8 (the
 * message says where). */
vs_status vs_rt_t5_tokenize(const vs_rt_t5_tok *t, const char *text, size_t len, int max_len, int32_t *ids,
                            int *n_valid, vs_err *err);

#ifdef __cplusplus
}
#endif

#endif
