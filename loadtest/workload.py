"""What streamed requests ask for: prompt and output lengths drawn from a
distribution (`--input-tokens`, `--output-tokens`: `128`, `uniform:64:256`,
`normal:128:32`), or prompts read from a JSONL file (`--prompts-file`, one
`{"prompt": ...}` or `{"messages": [...]}` per line, optionally with its own
`max_tokens`).

A generated prompt is N common English words: about N tokens for the sub-word
tokenizers servers use (the server's `usage` says exactly, and the summary
reports where the counts came from). Draws are seeded (`--seed`), so two runs
ask for the same lengths in the same order per user.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Lengths", "Prompt", "Workload", "WorkloadError"]

_WORDS = ["the", "of", "and", "to", "in", "is", "it", "that", "for", "on", "was", "with", "as", "at", "by", "be", "this", "from", "or", "an", "are", "not", "but", "had", "his", "they", "you", "were", "her", "she", "all", "one", "can", "there", "their", "which", "so", "up", "out", "if", "about", "who", "get", "go", "me"]  # fmt: skip


class WorkloadError(ValueError):
    """A length spec or prompts file that cannot be used; the message names it."""


@dataclass(frozen=True)
class Prompt:
    text: str
    max_tokens: int
    messages: list[dict[str, Any]] | None = None  # a chat prompt from the prompts file


@dataclass(frozen=True)
class Lengths:
    """A token-count distribution: fixed, uniform(low, high) or normal(mean, sd), at least 1."""

    kind: str
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, flag: str, spec: str) -> Lengths:
        text = str(spec).strip().lower()
        expected = f"{flag} {spec!r}: expected N, uniform:LOW:HIGH or normal:MEAN:SD (token counts >= 1)"
        parts = text.split(":")
        try:
            if len(parts) == 1:
                n = int(parts[0])
                if n < 1:
                    raise WorkloadError(expected)
                return cls("fixed", n)
            kind, a, b = parts[0], float(parts[1]), float(parts[2])
        except (ValueError, IndexError):
            raise WorkloadError(expected) from None
        if len(parts) != 3 or kind not in ("uniform", "normal"):
            raise WorkloadError(expected)
        if kind == "uniform" and not 1 <= a <= b:
            raise WorkloadError(f"{flag} {spec!r}: expected 1 <= LOW <= HIGH")
        if kind == "normal" and (a < 1 or b < 0):
            raise WorkloadError(f"{flag} {spec!r}: expected MEAN >= 1 and SD >= 0")
        return cls(kind, a, b)

    def draw(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.a)
        if self.kind == "uniform":
            return rng.randint(int(self.a), int(self.b))
        return max(1, round(rng.gauss(self.a, self.b)))

    def __str__(self) -> str:
        return str(int(self.a)) if self.kind == "fixed" else f"{self.kind}:{self.a:g}:{self.b:g}"


class Workload:
    """The prompts one user sends, in order."""

    def __init__(self, inputs: Lengths, outputs: Lengths, prompts: list[Prompt] | None, seed: int) -> None:
        self.inputs, self.outputs, self.prompts = inputs, outputs, prompts
        self.rng = random.Random(seed)
        self.index = self.rng.randrange(len(prompts)) if prompts else 0

    @classmethod
    def from_options(cls, input_tokens: str, output_tokens: str, prompts_file: str, seed: int) -> Workload:
        prompts = read_prompts(Path(prompts_file)) if prompts_file else None
        return cls(Lengths.parse("--input-tokens", input_tokens), Lengths.parse("--output-tokens", output_tokens),
                   prompts, seed)  # fmt: skip

    def next(self) -> Prompt:
        if self.prompts:
            p = self.prompts[self.index % len(self.prompts)]
            self.index += 1
            return p if p.max_tokens else Prompt(p.text, self.outputs.draw(self.rng), p.messages)
        n = self.inputs.draw(self.rng)
        words = " ".join(_WORDS[self.rng.randrange(len(_WORDS))] for _ in range(n))
        return Prompt(words, self.outputs.draw(self.rng))


def read_prompts(path: Path) -> list[Prompt]:
    """A JSONL prompts file: {"prompt": str} or {"messages": [...]}, optional "max_tokens"."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise WorkloadError(
            f"--prompts-file {path}: {exc.strerror}; expected a JSONL file of prompts"
        ) from None
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            raise WorkloadError(f"--prompts-file {path}, line {number}: not JSON; expected "
                                '{"prompt": "..."} or {"messages": [...]}') from None  # fmt: skip
        if not isinstance(doc, dict) or not (
            isinstance(doc.get("prompt"), str) or isinstance(doc.get("messages"), list)
        ):
            raise WorkloadError(f"--prompts-file {path}, line {number}: expected an object with a string "
                                '"prompt" or a list "messages"')  # fmt: skip
        max_tokens = doc.get("max_tokens", 0)
        if not isinstance(max_tokens, int) or max_tokens < 0:
            raise WorkloadError(
                f"--prompts-file {path}, line {number}: max_tokens {max_tokens!r}; expected a count >= 1"
            )
        messages = doc.get("messages")
        text = doc.get("prompt") or " ".join(
            str(m.get("content", "")) for m in messages or [] if isinstance(m, dict)
        )
        out.append(Prompt(text, max_tokens, messages))
    if not out:
        raise WorkloadError(f"--prompts-file {path}: no prompts in it")
    return out
