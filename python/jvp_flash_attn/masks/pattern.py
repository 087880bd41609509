"""Frame/chunk structure of an autoregressive video token sequence."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


@dataclass(frozen=True)
class FramePattern:
    """Tokens are laid out frame after frame; frames are grouped into chunks.

    Chunk 0 holds ``first_chunk_frames`` frames (default ``frames_per_chunk``),
    every later chunk ``frames_per_chunk``; the last chunk may be shorter.
    """

    tokens_per_frame: int
    num_frames: int
    frames_per_chunk: int = 1
    first_chunk_frames: int | None = None

    def __post_init__(self):
        _positive_int("tokens_per_frame", self.tokens_per_frame)
        _positive_int("num_frames", self.num_frames)
        _positive_int("frames_per_chunk", self.frames_per_chunk)
        if self.first_chunk_frames is not None:
            _positive_int("first_chunk_frames", self.first_chunk_frames)
            if self.first_chunk_frames > self.num_frames:
                raise ValueError(
                    f"first_chunk_frames must be <= num_frames={self.num_frames}, "
                    f"got {self.first_chunk_frames}")

    @property
    def num_tokens(self) -> int:
        return self.tokens_per_frame * self.num_frames

    @cached_property
    def chunk_frames(self) -> tuple[int, ...]:
        """Frames in each chunk."""
        first = self.frames_per_chunk if self.first_chunk_frames is None else self.first_chunk_frames
        first = min(first, self.num_frames)
        frames = [first]
        left = self.num_frames - first
        while left > 0:
            frames.append(min(self.frames_per_chunk, left))
            left -= frames[-1]
        return tuple(frames)

    @property
    def chunk_sizes(self) -> tuple[int, ...]:
        """Tokens in each chunk."""
        return tuple(f * self.tokens_per_frame for f in self.chunk_frames)

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_frames)

    def chunk_start(self, c: int) -> int:
        """First token of chunk ``c``."""
        return sum(self.chunk_sizes[:c])
