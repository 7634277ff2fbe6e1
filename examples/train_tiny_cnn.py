"""Train a tiny CNN with bnns-py's backward pass: Apple's BNNS training pattern, from numpy.

Task (synthetic): from noisy 16x16 images of rectangles, predict a smoothed, 2x2-block-averaged
version of the image. The network is an encoder/decoder
    conv 3x3 (1 -> 8, ReLU fused) -> conv 3x3 stride 2 (8 -> 8, ReLU fused)
    -> transposed conv 2x2 stride 2 (8 -> 1)
trained with SGD + momentum on the gradients BNNS computes (``Conv2d.backward`` /
``ConvTranspose2d.backward`` call ``BNNSFilterApplyBackwardBatch``). The weights are updated in
place, so each filter (created with ``use_client_pointer``) sees the new values next step.
The loss (mean squared error) is printed every step and must fall.

Convergence (the mean loss of the last 5 steps at least 3x below that of the first 5) is
checked from 40 steps on; shorter runs report how the loss moved without judging it.

Run:  python examples/train_tiny_cnn.py [--steps 80]
"""
import argparse

import numpy as np

import bnns_py

CHECKED_FROM_STEPS = 40  # fewer steps than this are too few to require convergence
WINDOW = 5               # steps averaged at the start and at the end


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def make_batch(rng, size):
    images = rng.normal(0.0, 0.2, size=(size, 1, 16, 16)).astype(np.float32)
    for image in images:  # a few bright rectangles per image
        for _ in range(3):
            y, x = rng.integers(0, 12, size=2)
            h, w = rng.integers(2, 6, size=2)
            image[0, y:y + h, x:x + w] += 1.0
    # target: the image smoothed, then averaged over 2x2 blocks (the decoder's resolution)
    smooth = bnns_py.conv2d(images, np.full((1, 1, 3, 3), 1 / 9, np.float32), padding=1)
    blocks = smooth.reshape(size, 1, 8, 2, 8, 2).mean(axis=(3, 5))
    targets = np.repeat(np.repeat(blocks, 2, axis=2), 2, axis=3)
    return images, targets


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=positive_int, default=80)
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--momentum", type=float, default=0.9)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    def init(*shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    layers = [
        bnns_py.Conv2d(init(8, 1, 3, 3, fan_in=9), np.zeros(8, np.float32), padding=1, activation="relu"),
        bnns_py.Conv2d(init(8, 8, 3, 3, fan_in=72), np.zeros(8, np.float32), stride=2, padding=1, activation="relu"),
        bnns_py.ConvTranspose2d(init(8, 1, 2, 2, fan_in=8), np.zeros(1, np.float32), stride=2),
    ]
    velocity = {id(a): np.zeros_like(a) for layer in layers for a in (layer.weight, layer.bias)}
    print(f"backend: {bnns_py.backend_info()['backend']}; network: {', '.join(map(repr, layers))}")
    losses = []
    for step in range(1, args.steps + 1):
        x, target = make_batch(rng, args.batch)
        activations = [x]
        for layer in layers:                                   # forward, keeping each input/output
            activations.append(layer(activations[-1]))
        residual = activations[-1] - target
        losses.append(float(np.mean(residual ** 2)))
        print(f"step {step:3d}  loss {losses[-1]:.5f}")
        grad = (2.0 * residual / residual.size).astype(np.float32)
        for index in reversed(range(len(layers))):             # backward, layer by layer
            layer = layers[index]
            grads = layer.backward(activations[index], activations[index + 1], grad,
                                   need_input_gradient=index > 0)
            for param, g in ((layer.weight, grads.weight), (layer.bias, grads.bias)):
                v = velocity[id(param)]
                v *= args.momentum
                v -= args.lr * g
                param += v                                     # in place: BNNS reads these arrays
            grad = grads.input
    for layer in layers:
        layer.close()
    window = min(WINDOW, len(losses) // 2)
    if window == 0:
        print(f"one step: loss {losses[0]:.5f} (train for more steps to see it fall)")
        return
    first, last = np.mean(losses[:window]), np.mean(losses[-window:])
    print(f"mean loss of the first {window} steps {first:.5f} -> last {window} steps {last:.5f} "
          f"({first / last:.1f}x lower)")
    if len(losses) < CHECKED_FROM_STEPS:
        print(f"({len(losses)} steps: too few to judge convergence, checked from {CHECKED_FROM_STEPS} steps)")
    elif not last < first / 3:
        raise SystemExit("training did not converge")


if __name__ == "__main__":
    main()
