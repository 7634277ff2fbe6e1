"""Train a tiny CNN with bnns-py's backward pass: Apple's BNNS training pattern from numpy.

The task is synthetic: tell apart 12x12 images that contain a horizontal bar from images that
contain a vertical bar (plus noise). The network is
    conv 3x3 (1 -> 8, ReLU fused) -> conv 3x3 stride 2 (8 -> 8, ReLU fused)
    -> transposed conv 2x2 stride 2 (8 -> 4) -> global average -> linear (numpy) -> logistic loss,
trained with plain SGD on the BNNS gradients. The loss is printed every step and must fall.

Run:  python examples/train_tiny_cnn.py [--steps 60]
"""
import argparse

import numpy as np

import bnns_py


def make_batch(rng, size):
    labels = rng.integers(0, 2, size=size)
    images = rng.normal(0.0, 0.3, size=(size, 1, 12, 12)).astype(np.float32)
    for image, label in zip(images, labels):
        position = rng.integers(2, 10)
        if label:
            image[0, position, 2:10] += 1.0  # horizontal bar
        else:
            image[0, 2:10, position] += 1.0  # vertical bar
    return images, labels.astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    def init(*shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    conv1 = bnns_py.Conv2d(init(8, 1, 3, 3, fan_in=9), np.zeros(8, np.float32), padding=1, activation="relu")
    conv2 = bnns_py.Conv2d(init(8, 8, 3, 3, fan_in=72), np.zeros(8, np.float32), stride=2, padding=1,
                           activation="relu")
    up = bnns_py.ConvTranspose2d(init(8, 4, 2, 2, fan_in=32), np.zeros(4, np.float32), stride=2)
    head_w, head_b = init(4, fan_in=4), np.zeros(1, np.float32)
    layers = (conv1, conv2, up)
    print(f"backend: {bnns_py.backend_info()['backend']}")
    first = last = None
    for step in range(1, args.steps + 1):
        x, labels = make_batch(rng, args.batch)
        h1 = conv1(x)
        h2 = conv2(h1)
        h3 = up(h2)                                   # (N, 4, 12, 12)
        features = h3.mean(axis=(2, 3))               # global average pool
        logits = features @ head_w + head_b[0]
        probabilities = 1.0 / (1.0 + np.exp(-logits))
        loss = float(-np.mean(labels * np.log(probabilities + 1e-7) + (1 - labels) * np.log(1 - probabilities + 1e-7)))
        accuracy = float(np.mean((probabilities > 0.5) == (labels > 0.5)))
        first = loss if first is None else first
        last = loss
        print(f"step {step:3d}  loss {loss:.4f}  accuracy {accuracy:.2f}")

        d_logits = ((probabilities - labels) / args.batch).astype(np.float32)
        d_head_w, d_head_b = features.T @ d_logits, d_logits.sum(keepdims=True)
        d_features = np.outer(d_logits, head_w)
        d_h3 = np.repeat(np.repeat((d_features / (12 * 12))[:, :, None, None], 12, 2), 12, 3).astype(np.float32)
        g3 = up.backward(h2, h3, d_h3)
        g2 = conv2.backward(h1, h2, g3.input)
        g1 = conv1.backward(x, h1, g2.input, need_input_gradient=False)
        for module, grads in ((up, g3), (conv2, g2), (conv1, g1)):
            module.weight -= args.lr * grads.weight   # in place: BNNS reads these arrays
            module.bias -= args.lr * grads.bias
        head_w -= args.lr * d_head_w
        head_b -= args.lr * d_head_b
    for layer in layers:
        layer.close()
    print(f"loss {first:.4f} -> {last:.4f}")
    if not last < 0.5 * first:
        raise SystemExit("training did not converge")


if __name__ == "__main__":
    main()
