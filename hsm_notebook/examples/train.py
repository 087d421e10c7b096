"""A stand-in for a training script: Hydra-style ``key=value`` arguments in, metrics out
(a ``val_loss`` per epoch while it runs, and the final ``val_loss`` and ``accuracy``).

    python train.py lr=0.01 model.width=128 seed=1 data_split=a

It "trains" for a moment and reports a validation loss that is lowest near
lr=3e-3 and for wider models, plus seed noise.  ``fail=true`` makes it crash,
to show how a failed task looks.
"""

import math
import random
import sys
import time

from hsm_notebook.metrics import log_metrics


def parse(argv):
    args = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"expected key=value, got {item!r}")
        args[key] = value
    return args


def main():
    args = parse(sys.argv[1:])
    lr = float(args.get("lr", 1e-3))
    width = int(args.get("model.width", 128))
    seed = int(args.get("seed", 0))
    epochs = int(args.get("epochs", 3))
    if args.get("fail") == "true":
        raise RuntimeError(f"diverged at lr={lr} (this task fails on purpose)")
    rng = random.Random(seed)
    loss = 1.0
    for epoch in range(epochs):
        time.sleep(float(args.get("sleep", 0.1)))
        loss = (math.log10(lr) + 2.5) ** 2 + 64 / width + 0.05 * rng.random() + 0.5 / (epoch + 1)
        print(f"epoch {epoch}: val_loss={loss:.4f}", flush=True)
        log_metrics(step=epoch, val_loss=round(loss, 4))  # a curve, seen live in sweep.metrics()
    log_metrics(val_loss=round(loss, 4), accuracy=round(1 / (1 + loss), 4))


if __name__ == "__main__":
    main()
