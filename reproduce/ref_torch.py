"""The PyTorch reference: ConvMixer / ConvMixer-XL transcribed from the reference
repository's ``networks.py`` (its layers in its order; not a file of that repository).

Same layer order as cmxl_keras/models.py (stem conv -> act -> BN; per layer a residual
depthwise conv -> act -> BN, then pointwise conv -> act -> BN; ConvMixer-XL wraps groups
of layers in a long residual; global pool; linear head), PyTorch's defaults everywhere
(NCHW tensors, BatchNorm momentum 0.1 / eps 1e-5, exact GELU), and the same pixel
normalization inside the model. ``build`` asserts the parameter count against
``cmxl_keras.architecture.count_params``, the closed form the Keras model is tested
against. The reproduction's loops, the tests and the speed bench use it (``pip install -r
reproduce/requirements.txt``).
"""

import torch
from torch import nn

from cmxl_keras.architecture import CIFAR_MEAN, CIFAR_STD, count_params

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU,
               "leaky_relu": nn.LeakyReLU}


class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


class ConvMixer(nn.Module):
    def __init__(self, width, depth, patch_size=2, kernel_size=5, num_classes=10,
                 activation="gelu", skip_period=0, normalize=True):
        super().__init__()
        act = ACTIVATIONS[activation]
        self.normalize = normalize  # False: inputs come normalized, as torchvision's give them
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1) * 255.0)

        def layer():
            return nn.Sequential(
                Residual(nn.Sequential(
                    nn.Conv2d(width, width, kernel_size, groups=width, padding="same"),
                    act(), nn.BatchNorm2d(width))),
                nn.Conv2d(width, width, kernel_size=1), act(), nn.BatchNorm2d(width))

        if skip_period:
            per_group = depth // skip_period
            body = [Residual(nn.Sequential(*[layer() for _ in range(per_group)]))
                    for _ in range(skip_period)]
        else:
            body = [layer() for _ in range(depth)]
        self.net = nn.Sequential(
            nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size), act(),
            nn.BatchNorm2d(width), *body,
            nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):  # x: raw pixels in [0, 255], NCHW (normalize=False: normalized)
        return self.net((x - self.mean) / self.std if self.normalize else x)


def build(width, depth, patch_size=2, kernel_size=5, num_classes=10, activation="gelu",
          skip_period=0, normalize=True):
    model = ConvMixer(width, depth, patch_size, kernel_size, num_classes, activation,
                      skip_period, normalize)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    expected = count_params(width, depth, patch_size, kernel_size, num_classes)
    assert trainable == expected, f"PyTorch model has {trainable:,} parameters, expected {expected:,}"
    return model


def convs_only(model):
    """``model`` with every activation and BatchNorm replaced by ``nn.Identity``, in place
    (``bench_train.py --convs-only``): what the convolutions, residual adds, head and
    optimizer step cost without the elementwise layers."""
    elementwise = (nn.BatchNorm2d, *ACTIVATIONS.values())
    for name, child in model.named_children():
        if isinstance(child, elementwise):
            setattr(model, name, nn.Identity())
        else:
            convs_only(child)
    return model


def make_train_step(model, lr=0.005, weight_decay=0.01, parameters=None, amp=True):
    """One optimizer step as the paper's script takes it: AdamW, cross-entropy, and on a
    GPU (with ``amp``) its fp16 autocast with loss scaling; the loss and the batch's
    correct count read back every step, as the script logs them. ``parameters``: the
    module's own, where ``model`` is its ``torch.compile`` wrapper."""
    optimizer = torch.optim.AdamW(model.parameters() if parameters is None else parameters,
                                  lr=lr, weight_decay=weight_decay)
    criterion = nn.CrossEntropyLoss()
    amp = amp and next(iter(optimizer.param_groups[0]["params"])).is_cuda
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step(x, y):
        model.train()
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            output = model(x)
            loss = criterion(output, y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        (output.max(1)[1] == y).sum().item()
        return loss.item()  # waits for the step, on a GPU too

    return step


def make_predict(model, amp=True):
    def predict(x):
        model.eval()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16,
                                                     enabled=amp and x.is_cuda):
            return model(x).argmax(1).cpu()  # .cpu() waits for the GPU

    return predict


def paper_train_transform(scale=0.75, reprob=0.2, ra_m=12, ra_n=2, jitter=0.2):
    """The training transforms of the paper's ``train.py``, with its defaults: on a PIL
    image, a normalized CHW tensor."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomResizedCrop(32, scale=(scale, 1.0), ratio=(1.0, 1.0)),
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.RandAugment(num_ops=ra_n, magnitude=ra_m),
        transforms.ColorJitter(jitter, jitter, jitter),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
        transforms.RandomErasing(p=reprob),
    ])


if __name__ == "__main__":
    for name, kwargs in {"cm_vanilla": dict(width=256, depth=8),
                         "cm_xl": dict(width=256, depth=66, activation="silu", skip_period=3)
                         }.items():
        m = build(**kwargs)
        print(name, sum(p.numel() for p in m.parameters()), "parameters")
