"""Incremental detokenization and stop strings.

Stage 5. Mirrors vllm/v1/engine/detokenizer.py. Decoding token by token is subtle: one token can
be half of a UTF-8 character, and many tokenizers decide spacing from the previous token. The
`tokenizers` library's DecodeStream keeps exactly the state needed and returns the new text only
when it is complete (vLLM's FastIncrementalDetokenizer uses it too).

Stop strings are searched only in the newly added text (plus the tail that could overlap a match),
and the text is cut before the stop string unless `include_stop_str_in_output`. Like stop tokens,
stop strings are held back until `min_tokens` tokens exist: text produced by the first
`min_tokens` tokens is never searched (vLLM moves its search start past that text, too).
"""

from __future__ import annotations

from tokenizers.decoders import DecodeStream
from transformers import PreTrainedTokenizerBase

from vllm_mini.sampling_params import SamplingParams


class IncrementalDetokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, params: SamplingParams) -> None:
        self.tokenizer = tokenizer
        self.params = params
        self.stop = list(params.stop or [])
        self.max_stop_len = max((len(s) for s in self.stop), default=0)
        self.output_text = ""
        self.token_ids: list[int] = []
        self.min_tokens = params.min_tokens
        # Stop strings may only match text at or after this offset (see min_tokens above).
        self._stop_search_start = 0
        self.enabled = params.detokenize
        self._stream = DecodeStream(skip_special_tokens=params.skip_special_tokens)
        self._backend = tokenizer.backend_tokenizer if self.enabled else None

    def update(self, new_token_ids: list[int], stop_terminated: bool) -> str | None:
        """Append tokens; return the stop string if one was hit (the text is already cut).

        Several tokens at once (speculative decoding accepts a few per step) are checked one by
        one: the output must end at the token that completed the stop string, exactly as it
        would have when tokens arrived singly; the tokens after it are dropped.
        """
        if len(new_token_ids) > 1 and self.stop and self.enabled:
            last = len(new_token_ids) - 1
            for i, token_id in enumerate(new_token_ids):
                stop = self._update([token_id], stop_terminated and i == last)
                if stop is not None:
                    return stop
            return None
        return self._update(new_token_ids, stop_terminated)

    def _update(self, new_token_ids: list[int], stop_terminated: bool) -> str | None:
        self.token_ids.extend(new_token_ids)
        if not self.enabled:
            return None
        start = len(self.output_text)
        for i, token_id in enumerate(new_token_ids):
            is_last = i == len(new_token_ids) - 1
            if is_last and stop_terminated and not self.params.include_stop_str_in_output:
                # eos / stop_token_ids end the request without appearing in the text.
                break
            piece = self._stream.step(self._backend, token_id)
            if piece:
                self.output_text += piece
            if len(self.token_ids) - len(new_token_ids) + i + 1 <= self.min_tokens:
                self._stop_search_start = len(self.output_text)
        if not self.stop or len(self.token_ids) <= self.min_tokens:
            return None
        return self._check_stop_strings(start)

    def _check_stop_strings(self, new_text_start: int) -> str | None:
        # A match may begin up to max_stop_len - 1 characters before the new text, but never in
        # text that the first min_tokens tokens produced.
        search_from = max(0, new_text_start - self.max_stop_len + 1, self._stop_search_start)
        best: tuple[int, str] | None = None
        for stop in self.stop:
            idx = self.output_text.find(stop, search_from)
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, stop)
        if best is None:
            return None
        idx, stop = best
        end = idx + len(stop) if self.params.include_stop_str_in_output else idx
        self.output_text = self.output_text[:end]
        return stop
