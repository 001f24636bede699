"""Diarization by clustering: speech regions -> sliding windows -> embeddings -> speakers -> turns.

This is the offline path that needs only a speaker-embedding model and a VAD
(both ship in packages). Windows are short enough for turn boundaries to land
within a few hundred milliseconds and long enough (1.5 s) for an embedding to
identify a voice; every instant of speech takes the speaker of the window
centred nearest to it. The number of speakers is given by the caller or found
by cutting an average-linkage tree at a cosine distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage

from altlas.models.speaker_embedding import FRAMES_PER_SECOND, SAMPLE_RATE, SpeakerEmbeddingRuntime
from altlas.schemas.types import SpeakerTurn


@dataclass(frozen=True)
class SpeakerCount:
    """What the caller said about the number of speakers (all optional)."""

    exact: int | None = None
    minimum: int = 1
    maximum: int = 20


@dataclass(frozen=True)
class WindowPlan:
    """How speech is cut into windows for embedding."""

    window_s: float = 1.5
    step_s: float = 0.25
    min_turn_s: float = 0.3
    merge_gap_s: float = 0.5  # one speaker's turns closer than this are one turn (a comma's pause)
    threshold: float = 0.35  # cosine distance that separates two voices (average linkage)


def windows_for(regions: list[tuple[float, float]], plan: WindowPlan) -> list[tuple[float, float]]:
    """Windows (seconds) covering each region; a region shorter than a window is one window."""
    out: list[tuple[float, float]] = []
    for start, end in regions:
        if end - start <= plan.window_s:
            out.append((start, end))
            continue
        t = start
        while t + plan.window_s < end:
            out.append((t, t + plan.window_s))
            t += plan.step_s
        out.append((end - plan.window_s, end))
    return out


def cluster(embeddings: np.ndarray, count: SpeakerCount, threshold: float) -> np.ndarray:
    """A speaker index per embedding, numbered by first appearance (0, 1, ...)."""
    n = embeddings.shape[0]
    if n == 0:
        return np.zeros(0, dtype=int)
    if n == 1 or count.exact == 1 or count.maximum == 1:
        return np.zeros(n, dtype=int)
    tree = linkage(embeddings.astype(np.float64), method="average", metric="cosine")
    if count.exact is not None:
        raw = fcluster(tree, t=min(count.exact, n), criterion="maxclust")
    else:
        raw = fcluster(tree, t=threshold, criterion="distance")
        found = len(set(raw.tolist()))
        wanted = min(max(found, count.minimum), count.maximum, n)
        if wanted != found:
            raw = fcluster(tree, t=wanted, criterion="maxclust")
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(c), len(order)) for c in raw], dtype=int)


def turns_from_windows(
    regions: list[tuple[float, float]],
    windows: list[tuple[float, float]],
    labels: np.ndarray,
    plan: WindowPlan,
    resolution_s: float = 0.05,
) -> list[SpeakerTurn]:
    """Speaker turns: each instant of speech takes the label of the nearest window centre in its region."""
    centres = np.array([(s + e) / 2 for s, e in windows])
    turns: list[list[float | int]] = []  # [start, end, label]
    for start, end in regions:
        inside = np.array([start - 1e-6 <= s and e <= end + 1e-6 for s, e in windows])
        if not inside.any():
            continue
        grid = np.arange(start, end, resolution_s)
        idx = np.flatnonzero(inside)
        nearest = idx[np.argmin(np.abs(centres[idx][None, :] - (grid + resolution_s / 2)[:, None]), axis=1)]
        run_start, run_label = start, int(labels[nearest[0]])
        for t, w in zip(grid[1:], nearest[1:], strict=True):
            if int(labels[w]) != run_label:
                turns.append([run_start, float(t), run_label])
                run_start, run_label = float(t), int(labels[w])
        turns.append([run_start, end, run_label])
    # A sliver shorter than min_turn_s between two turns is noise: give it to its longer neighbour.
    changed = True
    while changed and len(turns) > 1:
        changed = False
        for i, (s, e, _) in enumerate(turns):
            if float(e) - float(s) >= plan.min_turn_s:
                continue
            neighbours = [j for j in (i - 1, i + 1) if 0 <= j < len(turns) and _touch(turns[i], turns[j])]
            if not neighbours:
                continue
            j = max(neighbours, key=lambda k: float(turns[k][1]) - float(turns[k][0]))
            turns[i][2] = turns[j][2]
            changed = True
        merged: list[list[float | int]] = []
        for turn in turns:
            if merged and merged[-1][2] == turn[2] and _touch(merged[-1], turn):
                merged[-1][1] = turn[1]
            else:
                merged.append(list(turn))
        changed = changed and len(merged) < len(turns)
        turns = merged
    joined: list[list[float | int]] = []
    for turn in turns:
        if joined and joined[-1][2] == turn[2] and float(turn[0]) - float(joined[-1][1]) < plan.merge_gap_s:
            joined[-1][1] = turn[1]
        else:
            joined.append(turn)
    turns = joined
    names = _names([int(t[2]) for t in turns])
    return [
        SpeakerTurn(start=round(float(s), 3), end=round(float(e), 3), speaker=names[int(lab)])
        for s, e, lab in turns
    ]


def _touch(a: list[float | int], b: list[float | int]) -> bool:
    return abs(float(a[1]) - float(b[0])) < 1e-6 or abs(float(b[1]) - float(a[0])) < 1e-6


def _names(labels: list[int]) -> dict[int, str]:
    """SPEAKER_00, SPEAKER_01... in order of first appearance (pyannote's convention)."""
    names: dict[int, str] = {}
    for label in labels:
        names.setdefault(label, f"SPEAKER_{len(names):02d}")
    return names


def diarize_with_embeddings(
    runtime: SpeakerEmbeddingRuntime, audio: np.ndarray, count: SpeakerCount, plan: WindowPlan
) -> list[SpeakerTurn]:
    """Speaker turns of a 16 kHz clip using a speaker-embedding model and its VAD."""
    regions = [(r.start, r.end) for r in runtime.speech(audio)]
    if not regions:
        return []
    windows = windows_for(regions, plan)
    mel = runtime.mel(runtime.prepare(audio))
    frames = [
        (int(s * FRAMES_PER_SECOND), max(int(s * FRAMES_PER_SECOND) + 1, int(e * FRAMES_PER_SECOND)))
        for s, e in windows
    ]
    embeddings = runtime.embed_windows(mel, frames)
    labels = cluster(embeddings, count, plan.threshold)
    return turns_from_windows(regions, windows, labels, plan)


__all__ = ["SAMPLE_RATE", "SpeakerCount", "WindowPlan", "cluster", "diarize_with_embeddings", "windows_for"]
