"""One session of experience and consolidation (the logic behind ``neurobit learn``).

A session on a trained language-model checkpoint and a text file:

1. **Instance.** The model instance lives in ``root`` (default ``CHECKPOINT/lifecycle``). The
   first session creates it (:meth:`Lifecycle.create` from the checkpoint, then an
   ``attach_lora`` update: rank-``rank`` adapters on every BitLinear); later sessions load its
   latest incremental checkpoint.
2. **Experience.** The text is tokenized with the checkpoint's tokenizer; word ids are computed
   over the whole text (causal, as the data layer does). It is cut into non-overlapping windows
   of ``window + 1`` tokens (``x`` the first ``window``, ``y`` the next tokens; at most
   ``max_windows``, evenly spaced). Per window, from one forward pass without gradients:

   - ``loss``: mean token cross-entropy (nats/token);
   - ``surprise = (loss - mu) / sigma`` against the losses of earlier sessions' episodes
     (0 while there are fewer than 2 of them);
   - ACC signals: ``uncertainty`` = mean normalized entropy ``H(softmax(z)) / log V`` of the
     predictions (:func:`neurobit.functional.monitoring.normalized_entropy`), ``conflict`` =
     mean ``p_2 / p_1`` of the two most probable next tokens (1: two responses tie, 0: one
     dominates);
   - ``state`` ``[n_layers * n_circuits]``: mean LIF spike state per circuit after the
     window's last token (zeros for models without circuits);
   - ``output_tokens`` ``[window]``: the argmax predictions.

   Episodes (input = the ``window + 1`` tokens, targets = its next tokens) are appended to
   ``root/episodes.sqlite`` in one transaction.
3. **Consolidation** (when :func:`consolidation_due`): the ``select`` highest-value episodes of
   this session plus ``old_sequences`` windows of the checkpoint's original training data
   (``run.yaml`` -> :func:`prepare_run_data`; drawn with ``seed + n``, ``n`` the
   consolidations so far: a new slice each session, since a fixed slice is memorised by the
   adapters while held-out old-domain loss drifts up, see analysis/continual) are replayed
   into the adapters by ``lc.update("consolidate", ...)`` with
   ``lr_eff = min(lr, max_lr) * integrity``, where integrity is :func:`integrity_score` of the
   earlier sessions' episode losses (baseline) followed by this session's (recent).
   The event's params carry the session name, the text's sha256 and the episode ids.
   Replayed episodes get word ids recomputed from their own tokens (a word cut by the
   window's start hashes from the cut). A session is named ``session-<n>`` with ``n - 1`` the
   consolidations so far: episodes stored while the frequency bound held consolidation back
   share the name of the next consolidation and are replayed by it.

Losses before and after are measured on all windows of the session's text (and the old slice).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from neurobit.errors import ParameterError
from neurobit.functional.monitoring import normalized_entropy
from neurobit.memory.consolidation import (ConsolidationConfig, consolidation_data,
                                           consolidation_due, episodes_to_batch, integrity_score)
from neurobit.memory.episodic import Episode, EpisodicBuffer
from neurobit.memory.lifecycle import IDENTITY, Lifecycle
from neurobit.train.tokenizer import DEFAULT_WORD_BUCKETS

EPISODES = "episodes.sqlite"
Batch = tuple  # (x [N, T], y [N, T], word_ids [N, T]) int64


@dataclass(frozen=True)
class SessionConfig:
    """Options of one session (each checked; errors name the option).

    window: tokens per window (None: the checkpoint's ``train.block_size``).
    max_windows: most windows taken from the text (evenly spaced). select: episodes replayed.
    old_sequences: windows of the original training data replayed (0: none).
    rank, alpha: adapters attached in the first session.
    consolidation: the :class:`ConsolidationConfig` (lr, max_lr, max_steps, batch_size,
    replay_ratio, trainable, ...). session: name of the session (None: ``session-<n>``).
    """

    window: int | None = None
    max_windows: int = 256
    select: int = 64
    old_sequences: int = 64
    rank: int = 4
    alpha: float | None = None
    seed: int = 0
    consolidation: ConsolidationConfig = field(default_factory=ConsolidationConfig)
    session: str | None = None

    def __post_init__(self):
        for name, lo in (("max_windows", 1), ("select", 1), ("old_sequences", 0), ("rank", 1)):
            if int(getattr(self, name)) < lo:
                raise ParameterError(f"{name}: must be >= {lo}, got {getattr(self, name)}")
        if self.window is not None and int(self.window) < 1:
            raise ParameterError(f"window: must be >= 1, got {self.window}")


@dataclass
class SessionResult:
    """What a session did (losses in nats/token; ``None`` where nothing was measured)."""

    root: str
    session: str
    model_id: str
    created: bool
    n_windows: int
    window: int
    episodes_stored: int
    episodes_total: int
    episodes_selected: int
    integrity: float
    consolidated: bool
    lr: float | None
    steps: int
    text_loss_before: float
    text_loss_after: float
    old_loss_before: float | None
    old_loss_after: float | None
    events: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# -- loading -------------------------------------------------------------------------------------
def _find(checkpoint: Path, name: str) -> Path | None:
    return next((p for p in (checkpoint / name, checkpoint.parent / name) if p.is_file()), None)


def load_checkpoint_parts(checkpoint: str | Path):
    """``(model, config, tokenizer, run_yaml | None)`` of a run or ``ckpt_*`` directory."""
    from neurobit.train.checkpoint import load_model
    from neurobit.train.tokenizer import load_tokenizer
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise ParameterError(f"checkpoint: {checkpoint} is not a checkpoint directory")
    model, cfg = load_model(checkpoint)
    tok_path = _find(checkpoint, "tokenizer.json")
    if tok_path is None:
        raise ParameterError(f"checkpoint: no tokenizer.json in {checkpoint} or its parent")
    tok = load_tokenizer(tok_path)
    if tok.vocab_size != model.cfg.vocab_size:
        raise ParameterError(f"checkpoint: {tok_path} has {tok.vocab_size} ids, the model "
                             f"{model.cfg.vocab_size}")
    return model, cfg, tok, _find(checkpoint, "run.yaml")


def load_learned(checkpoint: str | Path, root: str | Path | None = None):
    """``(model with its adapters, tokenizer)``: the instance's latest state, for generation
    (``neurobit.decode.generate(lm_step_fn(model, tok), ...)``)."""
    model, _, tok, _ = load_checkpoint_parts(checkpoint)
    Lifecycle(default_root(checkpoint) if root is None else root).load_latest(model)
    return model.eval(), tok


def export_merged(checkpoint: str | Path, out: str | Path, root: str | Path | None = None
                  ) -> tuple[Path, int, int]:
    """Write the instance's latest state with its adapters merged into the ternary backbone
    (:func:`merge_lora`: ``W <- W + D``, re-quantized) as a plain run directory ``out``
    (``ckpt_*`` + ``latest``, ``tokenizer.json``, ``run.yaml``) that ``neurobit generate``,
    ``compile`` and ``train --resume`` read. Returns ``(checkpoint dir, flipped codes,
    ternary weights)``. Re-quantization makes the merged model differ slightly from base +
    adapters (bounded in docs/memory.md)."""
    import shutil

    from neurobit.memory.lora import merge_lora
    from neurobit.train.checkpoint import save_checkpoint
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and any(out.iterdir()):
        raise ParameterError(f"export: {out} exists and is not empty")
    model, cfg, _, run_yaml = load_checkpoint_parts(checkpoint)
    lc = Lifecycle(default_root(checkpoint) if root is None else root)
    lc.load_latest(model)
    rep = merge_lora(model)
    opt = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(out, model, opt, cfg, lc.step, torch.Generator().manual_seed(0))
    shutil.copyfile(_find(checkpoint, "tokenizer.json"), out / "tokenizer.json")
    if run_yaml is not None:
        shutil.copyfile(run_yaml, out / "run.yaml")
    return path, sum(r.flipped for r in rep.values()), sum(r.n for r in rep.values())


def default_root(checkpoint: str | Path) -> Path:
    """Where a checkpoint's instance lives unless told otherwise: ``CHECKPOINT/lifecycle``."""
    return Path(checkpoint) / "lifecycle"


# -- text -> windows -----------------------------------------------------------------------------
def text_windows(text: str, tok, n_word_buckets: int, window: int,
                 max_windows: int) -> Batch:
    """Windows ``(x, y, word_ids)`` ``[N, W]`` of ``text`` (see the module docstring). A text
    shorter than ``window + 1`` tokens gives one window of all its tokens."""
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    if len(ids) < 2:
        raise ParameterError(f"data: the text has {len(ids)} token(s); need at least 2")
    words = tok.word_ids(ids, n_word_buckets).to(torch.int64).numpy()
    W = min(int(window), len(ids) - 1)
    n = (len(ids) - 1) // W
    starts = np.arange(n) * W
    if n > max_windows:
        starts = starts[np.linspace(0, n - 1, max_windows).round().astype(np.int64)]
    idx = starts[:, None] + np.arange(W + 1)
    t, w = torch.from_numpy(ids[idx]), torch.from_numpy(words[idx[:, :-1]])
    return t[:, :-1].contiguous(), t[:, 1:].contiguous(), w.contiguous()


# -- experience ----------------------------------------------------------------------------------
def _state_summary(model, state, B: int) -> torch.Tensor:
    """``[B, n_layers * n_circuits]`` mean LIF spike state per circuit (``[B, 0]`` if none)."""
    parts = []
    for blk in getattr(state, "blocks", ()) or ():
        circ = getattr(blk, "circuits", None)
        lif = getattr(circ, "lif", None) if circ is not None else None
        s = getattr(lif, "s", None)
        if s is not None and s.dim() == 3:
            parts.append(s.float().mean(-1))
    return torch.cat(parts, 1) if parts else torch.zeros(B, 0)


@torch.no_grad()
def window_signals(model, batch: Batch, chunk: int = 32) -> dict[str, torch.Tensor]:
    """Per window: ``loss``, ``uncertainty``, ``conflict`` ``[N]``, ``state`` ``[N, S]``,
    ``pred`` ``[N, W]`` (see the module docstring)."""
    x, y, w = batch
    out = {k: [] for k in ("loss", "uncertainty", "conflict", "state", "pred")}
    for i in range(0, x.shape[0], chunk):
        xs, ys, ws = x[i:i + chunk], y[i:i + chunk], w[i:i + chunk]
        if hasattr(model, "run"):
            logits, state = model.run(xs, ws)
        else:
            logits, state = model(xs, ws), None
        logits = logits.double()
        ce = F.cross_entropy(logits.transpose(1, 2), ys, reduction="none")   # [b, W]
        p2 = torch.softmax(logits, -1).topk(min(2, logits.shape[-1]), -1).values
        conflict = (p2[..., 1] / p2[..., 0]) if p2.shape[-1] > 1 else torch.zeros_like(ce)
        out["loss"].append(ce.mean(1))
        out["uncertainty"].append(normalized_entropy(logits).mean(1))
        out["conflict"].append(conflict.mean(1))
        out["state"].append(_state_summary(model, state, xs.shape[0]))
        out["pred"].append(logits.argmax(-1))
    return {k: torch.cat(v, 0) for k, v in out.items()}


@torch.no_grad()
def mean_loss(model, batch: Batch, chunk: int = 32) -> float:
    """Mean token cross-entropy (nats/token) over all windows of ``batch``."""
    x, y, w = batch
    tot = 0.0
    for i in range(0, x.shape[0], chunk):
        logits = model(x[i:i + chunk], w[i:i + chunk])
        tot += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                     y[i:i + chunk].reshape(-1), reduction="sum"))
    return tot / y.numel()


def old_data_slice(run_yaml: Path, tok, n: int, window: int, n_word_buckets: int,
                   seed: int) -> Batch:
    """``n`` windows of the checkpoint's original training data (drawn with ``seed``)."""
    from neurobit.train.run_config import load_run_file, prepare_run_data
    data = prepare_run_data(load_run_file(run_yaml))
    if data.tokenizer().fingerprint() != tok.fingerprint():
        raise ParameterError(f"checkpoint: the corpus of {run_yaml} tokenizes differently from "
                             "the checkpoint's tokenizer.json")
    return data.get_batch("train", n, window, torch.Generator().manual_seed(int(seed)),
                          n_word_buckets)


def _episodes_batch(episodes: list[Episode], tok, n_word_buckets: int) -> Batch:
    x, y = episodes_to_batch(episodes)
    w = torch.stack([tok.word_ids(row.numpy(), n_word_buckets).to(torch.int64) for row in x])
    return x, y, w


# -- the session ---------------------------------------------------------------------------------
def open_instance(checkpoint: str | Path, root: str | Path | None, cfg: SessionConfig):
    """``(lifecycle, model, run_config, tokenizer, run_yaml, created)``: the instance of
    ``checkpoint`` in ``root``, created (with adapters) on first use."""
    model, run_cfg, tok, run_yaml = load_checkpoint_parts(checkpoint)
    root = default_root(checkpoint) if root is None else Path(root)
    created = not (root / IDENTITY).exists()
    if created:
        lc = Lifecycle.create(root, model, params={"source": str(Path(checkpoint).resolve())})
        lc.update("attach_lora", model, {}, {"rank": int(cfg.rank), "alpha": cfg.alpha,
                                             "include": ["*"], "seed": int(cfg.seed)})
    else:
        lc = Lifecycle(root)
        lc.load_latest(model)
    return lc, model.eval(), run_cfg, tok, run_yaml, created


def run_session(checkpoint: str | Path, text: str, cfg: SessionConfig = SessionConfig(),
                root: str | Path | None = None, source: str = "",
                now_s: float | None = None) -> SessionResult:
    """One session of experience and consolidation (see the module docstring)."""
    if not text.strip():
        raise ParameterError("data: the text is empty")
    lc, model, run_cfg, tok, run_yaml, created = open_instance(checkpoint, root, cfg)
    n_events = len(lc.events())
    nb = DEFAULT_WORD_BUCKETS  # as the data layer and generation bucket them (model: mod)
    window = int(cfg.window or run_cfg.train.block_size)
    batch = text_windows(text, tok, nb, window, cfg.max_windows)
    old = None
    if cfg.old_sequences:
        if run_yaml is None:
            raise ParameterError(f"checkpoint: no run.yaml in {checkpoint} or its parent (needed "
                                 "for the old-data slice; pass old_sequences=0 to skip it)")
        n_before = len([e for e in lc.events() if e["kind"] == "consolidate"])
        old = old_data_slice(run_yaml, tok, cfg.old_sequences, batch[0].shape[1], nb,
                             cfg.seed + n_before)   # a new slice every session

    # experience
    sig = window_signals(model, batch)
    buf = EpisodicBuffer(lc.root / EPISODES)
    try:
        _, past = buf.signals()
        past_loss = past["loss"]
        mu, sd = (past_loss.mean(), past_loss.std()) if len(past_loss) >= 2 else (0.0, 0.0)
        loss = sig["loss"].numpy()
        surprise = (loss - mu) / sd if sd > 0 else np.zeros_like(loss)
        n_done = len([e for e in lc.events() if e["kind"] == "consolidate"])
        name = cfg.session or f"session-{n_done + 1}"
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
        t_now = time.time() if now_s is None else float(now_s)
        full = torch.cat([batch[0], batch[1][:, -1:]], 1).numpy()
        eps = [Episode(input_tokens=full[i], state=sig["state"][i].numpy(),
                       output_tokens=sig["pred"][i].numpy(), loss=float(loss[i]),
                       surprise=float(surprise[i]), conflict=float(sig["conflict"][i]),
                       uncertainty=float(sig["uncertainty"][i]), session=name, time=t_now,
                       meta={"source": source, "text_sha256": sha, "window": i})
               for i in range(len(loss))]
        ids = buf.extend(eps)
        integrity = integrity_score(np.concatenate([past_loss[-256:], loss]), recent=len(loss))
        ccfg = cfg.consolidation
        last = [e for e in lc.events() if e["kind"] == "consolidate"]
        last_s = last[-1]["params"].get("time_s") if last else None
        selected = []
        before = mean_loss(model, batch)
        res = {"steps": 0, "lr": None, "old_loss_before": None, "old_loss_after": None}
        due = consolidation_due(ccfg, last_s, t_now, len(ids))
        if due:
            selected = buf.select(cfg.select, session=name)
            new = _episodes_batch(selected, tok, nb)
            ev = lc.update("consolidate", model, consolidation_data(new, old),
                           {"config": ccfg.to_dict(), "integrity": integrity, "session": name,
                            "source": source, "text_sha256": sha, "time_s": t_now,
                            "episode_ids": [int(e.id) for e in selected]})
            res = ev["metrics"]
        after = mean_loss(model, batch) if due else before
        total = len(buf)
    finally:
        buf.close()
    return SessionResult(str(lc.root), name, lc.model_id, created, batch[0].shape[0],
                         batch[0].shape[1], len(ids), total, len(selected), float(integrity),
                         bool(due), res["lr"], int(res["steps"]), before, after,
                         res["old_loss_before"], res["old_loss_after"],
                         lc.events()[n_events:])


def summary_lines(r: SessionResult) -> list[str]:
    """The one-screen summary ``neurobit learn`` prints."""
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"model {r.model_id} ({'created' if r.created else 'loaded'}) in {r.root}",
             f"session {r.session}: {r.n_windows} windows of {r.window} tokens; "
             f"episodes stored {r.episodes_stored} (buffer {r.episodes_total}), "
             f"selected {r.episodes_selected}",
             f"integrity {r.integrity:.3f}"
             + (f", lr {r.lr:.3g}, {r.steps} steps (adapters only)" if r.consolidated
                else ", consolidation not due (frequency bound)"),
             f"loss on the text:     {f(r.text_loss_before)} -> {f(r.text_loss_after)} nats/token",
             f"loss on the old data: {f(r.old_loss_before)} -> {f(r.old_loss_after)} nats/token"]
    for e in r.events:
        lines.append(f"logged event {e['seq']} {e['kind']} (step {e['step']}, "
                     f"checkpoint {e.get('checkpoint')}, "
                     f"{len(e.get('written', []))} tensors written)")
    return lines


def read_text_file(path: str | Path) -> str:
    """The UTF-8 text of ``path``; errors name the file (``data: ...``)."""
    p = Path(path)
    if not p.is_file():
        raise ParameterError(f"data: {p} is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ParameterError(f"data: {p} is not UTF-8 text ({e.reason})") from None
    if not text.strip():
        raise ParameterError(f"data: {p} is empty")
    return text


__all__ = ["SessionConfig", "SessionResult", "run_session", "summary_lines", "text_windows",
           "window_signals", "mean_loss", "old_data_slice", "open_instance", "load_learned",
           "load_checkpoint_parts", "default_root", "read_text_file", "export_merged"]
