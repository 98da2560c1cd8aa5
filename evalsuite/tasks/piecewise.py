"""Tokenizing a task's prompts fast: each distinct few-shot piece is encoded once.

A full HellaSwag split is 40,168 requests whose contexts (~800 tokens: ten shots and a
query) are encoded five times each by lm-eval's pair split (the context, then context +
continuation for each of the four endings): 43 M tokens, ~45 s of tokenizer time here. But the
text is made of pieces that repeat: every shot is a training row drawn by several documents,
every context is shared by its four requests, an MMLU subject's five shots open every one of
its questions. :class:`PiecewiseEncoder` cuts each text where a new pre-token must start (after
the few-shot delimiter ``"\\n\\n"`` when a non-space follows it, and between a context and a
continuation that starts with ``" "`` and a non-space), encodes each distinct piece once between
fixed neighbour characters, and concatenates. HellaSwag then needs ~4 M tokens of tokenizer work.

The result must equal ``tokenizer(text, add_special_tokens=False)`` exactly. It does for
tokenizers whose pre-tokenization never merges across those cut points (byte-level BPE with
GPT-2/Llama-3 style splitting, SentencePiece models). Every piece is checked to come out of its
padded encoding cleanly, and a sample of whole texts is encoded the plain way and compared:
on any difference the encoder falls back to plain encoding of every text (``fallback``).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

#: A cut after the few-shot delimiter, before a non-space character.
_DELIMITER_CUT = re.compile(r"\n\n(?=\S)")
# Neighbour characters a piece is encoded between, by the kind of cut on each side:
# after "\n\n" (the real text has "\n" before the piece), or the context/continuation cut.
# The continuation kind carries the whitespace that opens the continuation ("continuation ").
_LEFT = {"start": "", "delimiter": "\n"}
_RIGHT = {"end": "", "delimiter": "A"}


def _left(kind: str) -> str:
    return "a" if kind.startswith("continuation") else _LEFT[kind]


def _right(kind: str) -> str:
    return kind[len("continuation"):] + "a" if kind.startswith("continuation") else _RIGHT[kind]

PieceKey = tuple[str, str, str]  # (left cut kind, text, right cut kind)


class PiecewiseEncoder:
    """Token ids of many prompt texts, equal to plain encoding, each shared piece encoded once."""

    def __init__(self, tokenizer: Any, verify: int = 24) -> None:
        self.tokenizer = tokenizer
        self.verify = verify
        self.fallback = False  # True once a check failed: everything is encoded plainly
        self._pieces: dict[PieceKey, tuple[int, ...] | None] = {}  # None: no clean cut
        self._pads: dict[str, tuple[int, ...]] = {}
        # A text's first piece is encoded at the start of a string unless the tokenizer treats
        # the start like any other position (byte-level BPE without a prefix space does;
        # SentencePiece-style prefixes do not): then a shot opening one prompt and following
        # "\n\n" in another is one piece.
        self._start = "start" if self._start_matters() else "delimiter"

    # -- public ------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], continuations: Sequence[str] | None = None) -> list[tuple[int, ...]]:
        """``encode(text + continuation)`` for each text (continuation optional), as tuples."""
        prepared = self.prepare(texts, continuations)
        return [prepared[i] for i in range(len(prepared))]

    def prepare(self, texts: Sequence[str], continuations: Sequence[str] | None = None) -> Encoded:
        """Encode every distinct piece of the texts (one batched tokenizer call) and check a
        sample; the token ids of text ``i`` are assembled when asked for (``result[i]``), so a
        whole split is never held as token lists at once."""
        conts = continuations if continuations is not None else [""] * len(texts)
        if self.fallback:
            return Encoded([], self._plain([t + c for t, c in zip(texts, conts)]), {})
        layouts = [self._layout(t, c) for t, c in zip(texts, conts)]
        self._encode_pieces({k for layout in layouts if layout for k in layout})
        whole = [i for i, layout in enumerate(layouts)
                 if layout is None or any(self._pieces[k] is None for k in layout)]
        plain = dict(zip(whole, self._plain([texts[i] + conts[i] for i in whole])))
        result = Encoded(layouts, [], self._pieces, plain)
        if not self._verified(texts, conts, result):
            self.fallback = True
            return Encoded([], self._plain([t + c for t, c in zip(texts, conts)]), {})
        return result

    @property
    def pieces_encoded(self) -> int:
        return len(self._pieces)

    # -- internals ---------------------------------------------------------------------------
    def _plain(self, texts: list[str]) -> list[tuple[int, ...]]:
        if not texts:
            return []
        return [tuple(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many strings: the fast tokenizer's Rust backend directly when there is one
        (transformers' per-text conversion of its results cost a tenth of the time); the sample
        check in :meth:`prepare` compares against the plain ``tokenizer(...)`` call."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]

    def _start_matters(self) -> bool:
        probes = ("Question: What is it?", "The man", "1 and 2", " leading", "[x] y")
        nl = self._pad("\n")
        for probe in probes:
            after = tuple(self.tokenizer("\n" + probe, add_special_tokens=False)["input_ids"])
            if after[: len(nl)] != nl or after[len(nl):] != self._pad(probe):
                return True
        return False

    def _layout(self, text: str, continuation: str) -> list[PieceKey] | None:
        """The pieces of ``text + continuation`` with the kind of cut on each side.

        The continuation cut goes where the context's last non-space character ends, if
        whitespace and then a non-space follow (the whitespace starts a new pre-token); its
        kind records that whitespace, which becomes part of the right-hand padding.
        """
        cuts: list[tuple[int, str]] = [(m.end(), "delimiter") for m in _DELIMITER_CUT.finditer(text)]
        whole = text + continuation
        if continuation:
            at = len(text.rstrip())
            rest = whole[at:]
            spaces = len(rest) - len(rest.lstrip())
            if at == 0 or spaces == 0 or spaces == len(rest) or spaces > 4 or any(c > at for c, _ in cuts):
                return None  # no sure pre-token start there: encode this text whole
            cuts = [c for c in cuts if c[0] < at] + [(at, "continuation" + rest[:spaces])]
        keys: list[PieceKey] = []
        start, left = 0, self._start
        for pos, kind in cuts:
            if pos <= start:
                continue
            piece = whole[start:pos]
            # before the continuation's leading space a pre-token ends whatever follows, so the
            # piece is the same one the context alone ends with (one encoding serves both)
            right = "end" if kind.startswith("continuation") and not piece[-1].isspace() else kind
            keys.append((left, piece, right))
            start, left = pos, kind
        keys.append((left, whole[start:], "end"))
        return keys

    def _pad(self, text: str) -> tuple[int, ...]:
        if text not in self._pads:
            self._pads[text] = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()
        return self._pads[text]

    def _encode_pieces(self, keys: Iterable[PieceKey]) -> None:
        missing = [k for k in keys if k not in self._pieces]
        if not missing:
            return
        padded = [_left(left) + text + _right(right) for left, text, right in missing]
        encoded = self._encode_batch(padded)
        for key, ids in zip(missing, encoded):
            head, tail = self._pad(_left(key[0])), self._pad(_right(key[2]))
            body = ids[len(head):len(ids) - len(tail)]
            clean = (tuple(ids[:len(head)]) == head and tuple(ids[len(ids) - len(tail):]) == tail
                     and len(ids) >= len(head) + len(tail) and bool(body))
            self._pieces[key] = tuple(body) if clean else None

    def _verified(self, texts: Sequence[str], conts: Sequence[str], out: Encoded) -> bool:
        """Plain-encode an evenly spread sample of the texts and compare."""
        if not len(out) or self.verify <= 0:
            return True
        step = max(1, len(out) // self.verify)
        sample = list(range(0, len(out), step))[: self.verify]
        plain = self._plain([texts[i] + conts[i] for i in sample])
        return all(out[i] == ids for i, ids in zip(sample, plain))


class Encoded:
    """Token ids of prepared texts, assembled from their pieces on access."""

    def __init__(self, layouts: list[list[PieceKey] | None], ready: list[tuple[int, ...]],
                 pieces: dict[PieceKey, tuple[int, ...] | None], plain: dict[int, tuple[int, ...]] | None = None) -> None:
        self._layouts = layouts
        self._ready = ready  # plain-encoded, all texts (fallback)
        self._pieces = pieces
        self._plain = plain or {}

    def __len__(self) -> int:
        return len(self._ready) or len(self._layouts)

    def __getitem__(self, index: int) -> tuple[int, ...]:
        if self._ready:
            return self._ready[index]
        if index in self._plain:
            return self._plain[index]
        # Texts without a layout, or with a piece that has no clean cut, were plain-encoded into
        # self._plain by prepare(): here the layout and every one of its pieces exist.
        layout = self._layouts[index]
        assert layout is not None
        ids: list[int] = []
        for key in layout:
            piece = self._pieces[key]
            assert piece is not None
            ids.extend(piece)
        return tuple(ids)
