"""PyTorch/torchvision with a transcription of the reference's network and training loop,
run as a separate process for tests/test_reference.py.

PyTorch and torchvision run here, never inside the test process: their CUDA builds
load libraries (triton) that crash a process which has already loaded TensorFlow.

    python tests/torch_reference.py JOB IN.npz OUT.npz

Jobs:
- ``randaugment``: torchvision's RandAugment ops (``autoaugment._apply_op``, the
  function ``RandAugment.forward`` calls) on PIL images, each op at ``level`` with both
  signs; and torchvision's op table at that level.
- ``model``: the paper's network (reproduce/ref_torch.py: the layout of the paper's
  networks.py) with PyTorch's default initialization for ``seed``, or with the given
  parameters; its logits in eval and in train mode.
- ``flip``, ``jitter``, ``erasing``: torchvision's transforms on given draws (boxes,
  factors and orders), and the draws of the transforms themselves.
- ``split``: the reference's ``random_split(testvalset, [5000, 5000])`` on the default
  generator right after ``torch.manual_seed(seed)``: the two halves' indices.
- ``train``: the reference training loop (AdamW, the one-cycle ``lr_schedule`` set before
  every step, cross-entropy) on the given batches from the given parameters.

Parameters travel as ``p0000, p0001, ...``: every Conv2d (weight, bias), BatchNorm2d
(weight, bias, running_mean, running_var) and Linear (weight, bias) in module order.
"""

import json
import os
import sys

import numpy as np
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from reproduce import ref_torch  # noqa: E402  (the paper's network, shared with the benchmarks)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tensors(model):
    """The parameter tensors in the order described above."""
    out = []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            out += [module.weight, module.bias]
        elif isinstance(module, nn.BatchNorm2d):
            out += [module.weight, module.bias, module.running_mean, module.running_var]
    return out


def save_params(model, out, prefix="p"):
    for i, t in enumerate(tensors(model)):
        out[f"{prefix}{i:04d}"] = t.detach().numpy().copy()


def load_params(model, data):
    with torch.no_grad():
        for i, t in enumerate(tensors(model)):
            t.copy_(torch.from_numpy(data[f"p{i:04d}"]).to(t.dtype))


def build(spec):
    torch.manual_seed(spec.get("seed", 0))
    model = ref_torch.build(**spec["arch"])
    if spec.get("dtype") == "float64":
        model.double()
        with torch.no_grad():  # the constants too, not their float32 roundings
            for name, values in (("mean", ref_torch.CIFAR_MEAN), ("std", ref_torch.CIFAR_STD)):
                getattr(model, name).copy_(
                    torch.tensor(values, dtype=torch.float64).view(1, 3, 1, 1) * 255.0)
    return model


def nchw(images, dtype="float32"):
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype))


def job_randaugment(spec, data, out):
    from PIL import Image
    from torchvision.transforms import InterpolationMode, autoaugment

    level = spec["level"]
    images = data["images"]
    space = autoaugment.RandAugment(num_ops=2, magnitude=level)._augmentation_space(
        31, (images.shape[1], images.shape[2]))
    table = {}
    for name, (magnitudes, signed) in space.items():
        magnitude = float(magnitudes[level].item()) if magnitudes.ndim > 0 else 0.0
        table[name] = [magnitude, bool(signed)]
        for sign in (1, -1):
            value = magnitude * sign if signed else magnitude
            out[f"{name}{sign:+d}"] = np.stack([
                np.asarray(autoaugment._apply_op(Image.fromarray(image), name, value,
                                                 InterpolationMode.NEAREST, None))
                for image in images])
    out["table"] = np.array(json.dumps(table))


def job_crop(spec, data, out):
    """torchvision's crop: each image cropped at its given box (side, top, left) and
    resized as RandomResizedCrop does (PIL, bilinear); and ``draws`` boxes drawn by
    RandomResizedCrop itself (its ``get_params``) after ``torch.manual_seed(seed)``."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode, RandomResizedCrop
    from torchvision.transforms import functional as F

    images, size = data["images"], data["images"].shape[1]
    out["cropped"] = np.stack([
        np.asarray(F.resized_crop(Image.fromarray(image), int(top), int(left), int(side),
                                  int(side), [size, size], InterpolationMode.BILINEAR,
                                  antialias=True))
        for image, (side, top, left) in zip(images, data["boxes"])])
    torch.manual_seed(spec["seed"])
    image = Image.fromarray(images[0])
    draws = [RandomResizedCrop.get_params(image, spec["scale"], [1.0, 1.0])
             for _ in range(spec["draws"])]
    out["draws"] = np.array([(h, i, j) for i, j, h, w in draws])  # side, top, left


def job_flip(spec, data, out):
    """torchvision's horizontal flip of each image (PIL), and which of ``draws`` flips of
    one image ``RandomHorizontalFlip(p)`` itself made after ``torch.manual_seed(seed)``."""
    from PIL import Image
    from torchvision.transforms import RandomHorizontalFlip
    from torchvision.transforms import functional as F

    out["flipped"] = np.stack([np.asarray(F.hflip(Image.fromarray(image)))
                               for image in data["images"]])
    torch.manual_seed(spec["seed"])
    flip, image = RandomHorizontalFlip(spec["p"]), Image.fromarray(data["images"][0])
    mirrored = np.asarray(F.hflip(image))
    out["draws"] = np.array([np.array_equal(np.asarray(flip(image)), mirrored)
                             for _ in range(spec["draws"])])


def job_jitter(spec, data, out):
    """torchvision's ColorJitter adjustments (``functional.adjust_*`` on PIL images, as
    ``ColorJitter.forward`` calls them) with each image's given factors (brightness,
    contrast, saturation) in its given order; and ``draws`` draws of
    ``ColorJitter(*strengths).get_params`` after ``torch.manual_seed(seed)``: the order
    of the three and their factors."""
    from PIL import Image
    from torchvision.transforms import ColorJitter
    from torchvision.transforms import functional as F

    adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    jittered = []
    for image, factors, order in zip(data["images"], data["factors"], data["orders"]):
        image = Image.fromarray(image)
        for k in order:
            image = adjust[k](image, float(factors[k]))
        jittered.append(np.asarray(image))
    out["jittered"] = np.stack(jittered)
    torch.manual_seed(spec["seed"])
    jitter = ColorJitter(*spec["strengths"])
    draws = [jitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation,
                               jitter.hue) for _ in range(spec["draws"])]
    out["orders"] = np.array([[int(k) for k in order if k < 3] for order, *_ in draws])
    out["factors"] = np.array([factors[:3] for _, *factors in draws], np.float32)


def job_erasing(spec, data, out):
    """torchvision's erase (``functional.erase``, value 0) of each image's given box (top,
    left, height, width; height 0: none) after ToTensor and Normalize, back in pixel
    units; and the boxes of ``draws`` calls of ``RandomErasing(p, scale, ratio)`` itself
    after ``torch.manual_seed(seed)``, read off what it erased (height 0: nothing)."""
    from torchvision.transforms import RandomErasing
    from torchvision.transforms import functional as F

    mean = torch.tensor(ref_torch.CIFAR_MEAN)[:, None, None]
    std = torch.tensor(ref_torch.CIFAR_STD)[:, None, None]
    erased = []
    for image, (top, left, height, width) in zip(data["images"], data["boxes"]):
        x = (F.to_tensor(image) - mean) / std  # the reference's ToTensor and Normalize
        if height:
            x = F.erase(x, int(top), int(left), int(height), int(width), torch.tensor(0.0))
        erased.append(((x * std + mean) * 255.0).numpy().transpose(1, 2, 0))
    out["erased"] = np.stack(erased)
    torch.manual_seed(spec["seed"])
    erase = RandomErasing(spec["p"], spec["scale"], spec["ratio"], value=0)
    boxes = []
    for _ in range(spec["draws"]):
        hit = np.argwhere(erase(torch.ones(3, *data["images"].shape[1:3]))[0].numpy() == 0)
        if len(hit):
            (top, left), (bottom, right) = hit.min(0), hit.max(0)
            boxes.append((top, left, bottom - top + 1, right - left + 1))
        else:
            boxes.append((0, 0, 0, 0))
    out["draws"] = np.array(boxes)


def job_chain(spec, data, out):
    """The reference's whole training transform (``reproduce/ref_torch.py``), ``copies`` times
    on each image: the per-pixel mean and standard deviation in pixel units."""
    from PIL import Image

    torch.manual_seed(spec["seed"])
    transform = ref_torch.paper_train_transform()
    mean, std = np.array(ref_torch.CIFAR_MEAN) * 255, np.array(ref_torch.CIFAR_STD) * 255
    outs = np.stack([np.stack([transform(Image.fromarray(image)).numpy().transpose(1, 2, 0)
                               for _ in range(spec["copies"])]) for image in data["images"]])
    outs = outs * std + mean
    out["mean"], out["std"] = outs.mean(1), outs.std(1)


def job_model(spec, data, out):
    model = build(spec)
    if "p0000" in data:
        load_params(model, data)
    save_params(model, out)
    x = nchw(data["images"], spec.get("dtype", "float32"))
    with torch.no_grad():
        model.eval()
        out["eval_logits"] = model(x).numpy()
        model.train()
        out["train_logits"] = model(x).numpy()


def job_split(spec, data, out):
    """The reference's validation/test halves: seeded first, as its train.py is, then
    ``random_split`` of the 10,000 test images (building the datasets draws nothing)."""
    torch.manual_seed(spec["seed"])
    val, test = torch.utils.data.random_split(range(spec["size"]), spec["lengths"])
    out["val"], out["test"] = np.array(val.indices), np.array(test.indices)


def job_train(spec, data, out):
    """The reference's loop for ``epochs`` epochs of the given batches."""
    model = build(spec)
    load_params(model, data)
    epochs, lr_max = spec["epochs"], spec["lr_max"]
    batches = [(nchw(x), torch.from_numpy(y.astype(np.int64)))
               for x, y in zip(data["x"], data["y"])]
    # The reference script's own lines:
    lr_schedule = lambda t: np.interp([t], [0, epochs * 2 // 5, epochs * 4 // 5, epochs],  # noqa: E731
                                      [0, lr_max, lr_max / 20.0, 0])[0]
    opt = torch.optim.AdamW(model.parameters(), lr=lr_max, weight_decay=spec["weight_decay"])
    criterion = nn.CrossEntropyLoss()
    losses, lrs = [], []
    steps_per_epoch = len(batches) // epochs
    for epoch in range(epochs):
        loader = batches[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch]
        for i, (X, y) in enumerate(loader):
            model.train()
            lr = lr_schedule(epoch + (i + 1) / len(loader))
            opt.param_groups[0].update(lr=lr)
            opt.zero_grad()
            output = model(X)
            loss = criterion(output, y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            lrs.append(lr)
    out["losses"] = np.array(losses)
    out["lrs"] = np.array(lrs)
    save_params(model, out)


if __name__ == "__main__":
    job, in_path, out_path = sys.argv[1:4]
    with np.load(in_path) as loaded:
        data = dict(loaded)
    spec = json.loads(str(data.pop("spec")))
    out = {}
    globals()[f"job_{job}"](spec, data, out)
    np.savez(out_path, **out)
    print(f"{job}: done")
