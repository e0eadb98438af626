"""The reference's training loop (the paper's ``train.py``, transcribed step for step), as
a run that checkpoints every epoch and resumes, on exactly the images and split of one of
our runs; its last weights converted into this project's Keras model at the end.

    python -m reproduce reference-loop --data-dir D --run-dir runs/reference
        [--config cm_vanilla] [--set seed=1205] [--val-from-train 1000] [--workers 8]
        [--time-limit S]

The loop: the reference network of ``ref_torch.py``, torchvision's transforms on PIL images
in a ``DataLoader`` (shuffled, the last partial batch kept), AdamW, the learning rate set
before every step to ``np.interp(epoch + (i + 1) / len(loader), [0, 2E//5, 4E//5, E],
[0, lr, lr/20, 0])``, fp16 autocast and GradScaler on a GPU, the seeds set as it sets them.
The config (``--config`` and ``--set``, as ``cli.py train`` takes them) gives the
architecture, epochs, batch size, peak learning rate, seed and the split, which
``cmxl_keras.splitting`` draws as it draws ours (``split.json`` records the digests).

The run folder holds ``checkpoint.pt`` (model, optimizer, scaler, epoch, the records and
every random state the loop and its DataLoader draw from: torch's, CUDA's, NumPy's and
Python's; the DataLoader's shuffle and its workers' seeds are drawn from torch's at each
epoch's start), replaced whole after every epoch, so a command stopped anywhere resumes
at the epoch after the last one saved and goes on as the run left alone would. It stops
itself before ``--time-limit`` seconds (exit 7, as ``cli.py train``) or after
``--stop-after`` epochs. At the end: ``model.keras`` (the last weights in our Keras model,
whose forward pass is proven equal to the reference's), ``metrics.json`` (one record per
epoch), ``results.json`` (``"loop": "reference"``); from the start, ``config.toml`` and
``config.json``, ``split.json``, ``env.json`` and ``command.txt``, as ``cli.py train``
writes them: ``cli.py evaluate`` scores it as it scores our runs. A resumed run keeps its
saved config (``--config`` and ``--set`` apply to a new run). Needs torch and torchvision; Keras (any backend) for the end.
"""

import os
import random
import time

import numpy as np

import reproduce
from cmxl_keras.architecture import CIFAR_MEAN, CIFAR_STD

EXIT_STOPPED = 7  # as cli.py train's time limit: stopped, saved, resumable
CHECKPOINT = "checkpoint.pt"


def random_states(torch):
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_random_states(torch, states):
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def train(spec, splits, log, run_dir=None, stop=lambda seconds: False):
    """The reference's loop on ``splits``' images; returns (per-epoch records, the torch
    model, whether it finished). ``spec``: width, depth, patch_size, kernel_size,
    activation, skip_period, epochs, batch_size, lr, seed, device, workers, and ``drop``
    (the torchvision transforms left out, by class name). With ``run_dir``, it resumes from
    and saves ``checkpoint.pt`` there after every epoch; ``stop(epoch seconds)`` is asked
    after every epoch whether to stop there."""
    import torch
    from PIL import Image
    from torch import nn
    from torchvision import transforms

    from reproduce import ref_torch

    # train.py seeds first, then builds its transforms, data and model.
    torch.manual_seed(spec["seed"])
    np.random.seed(spec["seed"])
    random.seed(spec["seed"])

    class Images(torch.utils.data.Dataset):  # torchvision's CIFAR10 dataset, from arrays
        def __init__(self, split, transform):
            self.split, self.transform = split, transform

        def __len__(self):
            return len(self.split.labels)

        def __getitem__(self, i):
            return (self.transform(Image.fromarray(self.split.images[i])),
                    int(self.split.labels[i]))

    test_transform = transforms.Compose([transforms.ToTensor(),
                                         transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    train_transform = ref_torch.paper_train_transform()
    train_transform.transforms = [t for t in train_transform.transforms
                                  if type(t).__name__ not in spec.get("drop", ())]
    log("  transforms: " + " -> ".join(type(t).__name__ for t in train_transform.transforms))
    trainloader = torch.utils.data.DataLoader(
        Images(splits.train, train_transform), batch_size=spec["batch_size"],
        shuffle=True, num_workers=spec["workers"])
    valloader = torch.utils.data.DataLoader(
        Images(splits.val, test_transform), batch_size=spec["batch_size"], shuffle=False,
        num_workers=spec["workers"])
    device = torch.device(spec["device"])
    model = ref_torch.build(spec["width"], spec["depth"], spec["patch_size"],
                            spec["kernel_size"], len(splits.class_names), spec["activation"],
                            spec["skip_period"], normalize=False).to(device)
    epochs, lr_max = spec["epochs"], spec["lr"]

    def lr_schedule(t):
        return np.interp([t], [0, epochs * 2 // 5, epochs * 4 // 5, epochs],
                         [0, lr_max, lr_max / 20.0, 0])[0]

    opt = torch.optim.AdamW(model.parameters(), lr=lr_max, weight_decay=0.01)
    criterion = nn.CrossEntropyLoss()
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    records, start_epoch = [], 0
    path = run_dir and os.path.join(run_dir, CHECKPOINT)
    if path and os.path.isfile(path):
        state = torch.load(path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        set_random_states(torch, state["random"])
        records, start_epoch = state["records"], state["epoch"]
        log(f"  resumed {path} after epoch {start_epoch} of {epochs}")
    for epoch in range(start_epoch, epochs):
        start = time.time()
        train_loss, train_acc, n = 0.0, 0, 0
        for i, (x, y) in enumerate(trainloader):
            model.train()
            x, y = x.to(device), y.to(device)
            opt.param_groups[0].update(lr=lr_schedule(epoch + (i + 1) / len(trainloader)))
            opt.zero_grad()
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                output = model(x)
                loss = criterion(output, y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            train_loss += loss.item() * y.size(0)
            train_acc += (output.max(1)[1] == y).sum().item()
            n += y.size(0)
        model.eval()
        val_loss, val_acc, m = 0.0, 0, 0
        with torch.no_grad():
            for x, y in valloader:
                x, y = x.to(device), y.to(device)
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    output = model(x)
                val_loss += criterion(output.float(), y).item() * y.size(0)
                val_acc += (output.max(1)[1] == y).sum().item()
                m += y.size(0)
        seconds = time.time() - start
        records.append({"epoch": epoch + 1, "loss": train_loss / n, "accuracy": train_acc / n,
                        "val_loss": val_loss / m, "val_accuracy": val_acc / m,
                        "seconds": seconds})
        log(f"  epoch {epoch + 1}/{epochs}: loss {train_loss / n:.4f} acc {train_acc / n:.4f}"
            f" | val loss {val_loss / m:.4f} acc {val_acc / m:.4f} | {seconds:.1f} s")
        if path:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scaler": scaler.state_dict(), "epoch": epoch + 1, "records": records,
                     "random": random_states(torch)}
            torch.save(state, path + ".tmp")  # replaced whole: a kill leaves the older one
            os.replace(path + ".tmp", path)
            from cmxl_keras.runs import write_json  # the records so far, as cli.py's runs

            write_json(os.path.join(run_dir, "metrics.json"), records)
        if epoch + 1 < epochs and stop(seconds):
            return records, model, False
    return records, model, True


def predict(model, images, device="cpu", batch=256):
    """The class ``model`` (the reference network, trained) predicts for each of the uint8
    ``images`` ``[N, H, W, 3]``, read as the loop reads its validation images (ToTensor,
    Normalize; fp16 autocast on a GPU)."""
    import torch
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    device = torch.device(device)
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.stack([transform(Image.fromarray(image))
                             for image in images[start:start + batch]]).to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                out.append(model(x).argmax(1).cpu().numpy())
    return np.concatenate(out)


def to_keras(torch_model, keras_model):
    """The reference network's weights and BatchNorm statistics into our Keras model of
    the same architecture, layer by layer in order (their layouts transposed)."""
    import keras
    from torch import nn

    tensors = []
    for module in torch_model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            tensors.append([module.weight, module.bias])
        elif isinstance(module, nn.BatchNorm2d):
            tensors.append([module.weight, module.bias, module.running_mean,
                            module.running_var])
    kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
             keras.layers.BatchNormalization, keras.layers.Dense)
    layers = [layer for layer in keras_model.layers if isinstance(layer, kinds)]
    assert len(layers) == len(tensors), (len(layers), len(tensors))
    for layer, group in zip(layers, tensors):
        weights = [t.detach().float().cpu().numpy() for t in group]
        if isinstance(layer, keras.layers.DepthwiseConv2D):  # (C, 1, k, k) -> (k, k, C, 1)
            weights[0] = weights[0].transpose(2, 3, 0, 1)
        elif isinstance(layer, keras.layers.Conv2D):  # (out, in, k, k) -> (k, k, in, out)
            weights[0] = weights[0].transpose(2, 3, 1, 0)
        elif isinstance(layer, keras.layers.Dense):
            weights[0] = weights[0].T
        layer.set_weights(weights)
    return keras_model


def main(args):
    """The loop as a run: ``args`` holds ``reference-loop``'s options (``reproduce/cli.py``);
    returns 0 when the run is finished, ``EXIT_STOPPED`` when it stopped to resume."""
    began = time.monotonic()
    from cmxl_keras import runs, settings, splitting

    resuming = os.path.isfile(os.path.join(args.run_dir, "config.json"))
    cfg = (settings.load_saved(args.run_dir) if resuming else settings.resolve(
        args.config, args.overrides, data_dir=args.data, val_from_train=args.val_from_train))
    cfg = cfg.replace(data_dir=args.data)  # the images may lie elsewhere on this machine
    splits = splitting.load_splits(cfg, log=print)  # bad flags and data: nothing written yet
    os.makedirs(args.run_dir, exist_ok=True)
    command = reproduce.command_line()
    if resuming:  # the saved config stands (--config and --set apply to a new run only)
        with open(os.path.join(args.run_dir, "command.txt"), "a") as f:
            f.write(command + "\n")
    else:  # as cli.py train records its runs: config, command, split, code and versions
        runs.write_run_metadata(args.run_dir, cfg, [command], splits.info)
        env = runs.read_json(os.path.join(args.run_dir, "env.json"), {})
        env["reference_packages"] = runs.package_versions(("torch", "torchvision", "pillow"))
        runs.write_json(os.path.join(args.run_dir, "env.json"), env)
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = {key: getattr(cfg, key) for key in ("width", "depth", "patch_size", "kernel_size",
                                              "activation", "skip_period", "epochs",
                                              "batch_size", "seed")}
    spec.update(lr=cfg.lr_max, device=device, workers=args.workers,
                drop=[d for d in args.drop.split(",") if d])
    done = [0]

    def stop(seconds):  # before the time limit, with an epoch's time to spare
        done[0] += 1
        over = args.time_limit and time.monotonic() - began + 1.5 * seconds > args.time_limit
        return bool(over or (args.stop_after and done[0] >= args.stop_after))

    records, model, finished = train(spec, splits, print, args.run_dir, stop)
    runs.write_json(os.path.join(args.run_dir, "metrics.json"), records)
    if not finished:
        print(f"stopped after epoch {records[-1]['epoch']} of {cfg.epochs}; resume with the "
              f"same command")
        return EXIT_STOPPED
    from cmxl_keras import models

    keras_model = to_keras(model.cpu().eval(), models.from_config(cfg))
    keras_model.save(os.path.join(args.run_dir, "model.keras"))
    final = records[-1]
    runs.write_json(os.path.join(args.run_dir, "results.json"), {
        "epochs": cfg.epochs, "final": {"epoch": final["epoch"],
                                        "val_accuracy": final["val_accuracy"],
                                        "val_loss": final["val_loss"],
                                        "accuracy": final["accuracy"], "loss": final["loss"]},
        "train_seconds_total": sum(r["seconds"] for r in records), "loop": "reference",
        "device": device})
    print(f"finished: last top-1 {final['val_accuracy'] * 100:.2f} % on {len(splits.val)} "
          f"validation images; {args.run_dir}/model.keras")
    return 0

