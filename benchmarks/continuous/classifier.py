"""Train the verse-vs-prose attribute classifier on a generator's noisy inputs (issue 15.2).

python3 benchmarks/continuous/classifier.py GENERATOR_DIR OUT_DIR [steps] [power]
The generator's family picks the classifier's input: a gaussian (Diffusion-LM) model -> "latent" (x_t from its
frozen embeddings, t ~ U{0..T}); a masked (MDLM) model -> "tokens" (each token masked with probability t ~ U(0,1)).
Windows: every non-overlapping window of the generator's length in the bundled plays' training split (the
library's document split, 5% validation), labelled by `guidance.attributes.verse_or_prose`; held-out accuracy on
the validation windows at several noise levels is printed (balanced: the mean of the per-class accuracies).
"""
import json
import sys
import time
from functools import partial

import torch

from textdiffusion import Pipeline
from textdiffusion.data.corpus import iter_documents
from textdiffusion.guidance.attributes import labelled_windows
from textdiffusion.guidance.classifier import (
    AttributeClassifier,
    ClassifierConfig,
    masked_tokens,
    noisy_latents,
    train_classifier,
)

gen_dir, out_dir = sys.argv[1], sys.argv[2]
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 600
power = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0  # latent: t = T u^power (see noisy_latents)
torch.manual_seed(0)
pipe = Pipeline.from_pretrained(gen_dir)
tok, process = pipe.tokenizer, pipe.process
t0 = time.perf_counter()
train_ids, train_labels = labelled_windows(iter_documents("shakespeare", "train"), tok, pipe.seq_len)
val_ids, val_labels = labelled_windows(iter_documents("shakespeare", "validation"), tok, pipe.seq_len)
print(json.dumps({"train_windows": len(train_ids), "verse_share": float(train_labels.float().mean()),
                  "val_windows": len(val_ids), "seconds": time.perf_counter() - t0}), flush=True)
if process.name == "gaussian":
    table = process.embedding_table(pipe.model).detach().float()
    cfg = ClassifierConfig("latent", tok.vocab_size, tok.mask_id, pipe.seq_len, latent_dim=process.embed_dim,
                           num_steps=process.num_steps)

    def noise(ids, gen):
        return noisy_latents(process, table, ids, gen, power)

    def at_level(ids, frac, gen):
        level = round(frac * process.num_steps)
        abar = float(process.abar[level])
        x = abar ** 0.5 * table[ids] + (1 - abar) ** 0.5 * torch.randn(*ids.shape, table.shape[1], generator=gen)
        return x, torch.full((ids.shape[0],), level / process.num_steps)
else:
    cfg = ClassifierConfig("tokens", tok.vocab_size, tok.mask_id, pipe.seq_len)
    noise = partial(masked_tokens, tok.mask_id)

    def at_level(ids, frac, gen):
        masked = torch.rand(ids.shape, generator=gen) < frac
        x = torch.where(masked, torch.full_like(ids, tok.mask_id), ids)
        return x, masked.float().mean(1)
model = AttributeClassifier(cfg)
if cfg.kind == "latent":
    model.attach(process, table)
losses = []
t0 = time.perf_counter()
train_classifier(model, train_ids, train_labels, noise, steps, batch_size=32, lr=1e-3, seed=0,
                 log=lambda step, loss: losses.append(loss))
seconds = time.perf_counter() - t0
accuracy = {}
gen = torch.Generator().manual_seed(1)
with torch.no_grad():
    for frac in (0.0, 0.25, 0.5, 0.75, 0.95):
        x, t = at_level(val_ids, frac, gen)
        pred = torch.cat([model(x[i : i + 256], t[i : i + 256]).argmax(-1) for i in range(0, len(x), 256)])
        accuracy[frac] = float(sum((pred[val_labels == c] == c).float().mean() for c in (0, 1)) / 2)
model.save(out_dir)
print(json.dumps({"kind": cfg.kind, "steps": steps, "train_seconds": seconds,
                  "loss_first_50": sum(losses[:50]) / 50, "loss_last_50": sum(losses[-50:]) / 50,
                  "balanced_accuracy_by_noise": accuracy, "out": out_dir}), flush=True)
