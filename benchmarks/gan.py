"""GAN: gendl (`tasks.gan.model`) against the book's DCGAN listing, training steps per second in one run.

    KERAS_HOME=/path/to/keras-home python -m benchmarks.gan [--quick]

The book trains on CelebA at 64x64x3, which is not available offline. The benchmark writes a
temporary folder of 64x64 RGB PNGs (Fashion-MNIST training images from the Keras cache, upscaled)
and both implementations train the book's full architecture on those images: batch 32,
latent_dim 128, Adam(1e-4) for each network, label noise 0.05, dropout 0.2.

a. training steps per second from the end of step 1 (which traces) over a fixed number of steps:
   the book's GAN fed by `image_dataset_from_directory` as printed; gendl's compiled GAN (width
   1.0) on the uint8 array its data step stores (`read_folder`), fed by `image_dataset`; and
   gendl with a moving average of the generator (ema_decay 0.999), for what the average costs;
b. peak resident memory of each training process, and the memory its training data takes;
c. the d_loss and g_loss each reports, and the sizes of the models (the same architecture).

Each run is its own interpreter (`run_in_child`), so its peak memory is its own; rounds alternate
the order (book, gendl, gendl EMA, then the reverse). Prints markdown tables and writes
benchmarks/results/gan[_quick].json.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    REPO_ROOT,
    current_rss_bytes,
    environment,
    markdown_table,
    mib,
    per_run,
    run_in_child,
    timed,
    write_results,
)

SEED = 1337
IMAGE_SIZE = 64  # the book's CelebA size
CHANNELS = 3
BATCH_SIZE = 32  # the book's (its image_dataset_from_directory batches by 32)
LATENT_DIM = 128  # the book's, params.yaml gan.model.latent_dim
LEARNING_RATE = 1e-4  # both Adams: the book's, params.yaml gan.train.learning_rate
LABEL_NOISE = 0.05  # the book's, params.yaml gan.train.label_noise
DROPOUT = 0.2  # the book's, params.yaml gan.model.dropout
WIDTH = 1.0  # gendl's multiplier of the book's filter counts: the book's network
EMA_DECAY = 0.999  # the extra row: gendl with a moving average of the generator
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}
NUM_SOURCE_IMAGES = 60_000  # Fashion-MNIST's training set


@dataclass(frozen=True)
class Scale:
    num_steps: int  # timed training steps, after step 1 (which traces)
    rounds: int  # each round trains every implementation once, in alternating order

    @property
    def num_images(self) -> int:
        """One epoch over the folder is step 1 plus the timed steps, every batch full."""
        return (self.num_steps + 1) * BATCH_SIZE


# A step of the book's network at 64x64 takes ~4 CPU seconds (~2 s on 2 idle cores), and each run
# spends ~15-20 s more on imports and step 1: 16 steps keep the 6 runs near 5 minutes.
REAL = Scale(num_steps=16, rounds=2)
QUICK = Scale(num_steps=4, rounds=2)

# name: (child function, its own arguments); the order of the first round
IMPLEMENTATIONS = {
    "book": ("book_training", {}),
    "gendl": ("gendl_training", {"ema_decay": 0.0}),
    "gendl_ema": ("gendl_training", {"ema_decay": EMA_DECAY}),
}
LABELS = {
    "book": "book: `image_dataset_from_directory`, `GAN` (as printed)",
    "gendl": "gendl: `GAN`, `read_folder` uint8, `image_dataset`",
    "gendl_ema": f"gendl, `ema_decay` {EMA_DECAY:g}",
}


# --- The runs each child process makes --------------------------------------------------------


def write_image_folder(folder: str, num_images: int) -> dict[str, Any]:
    """The first Fashion-MNIST training images as 64x64 RGB PNGs in `folder`/images (CelebA's
    folder holds its images in one subfolder too, which `label_mode=None` ignores)."""
    import keras
    from PIL import Image

    (x_train, _), _ = keras.datasets.fashion_mnist.load_data()
    images = Path(folder) / "images"
    images.mkdir(parents=True)
    for index, pixels in enumerate(x_train[:num_images]):  # (28, 28) uint8
        image = Image.fromarray(pixels).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC).convert("RGB")
        image.save(images / f"{index:06d}.png")
    return {
        "num_images": num_images,
        "folder_bytes": sum(path.stat().st_size for path in images.iterdir()),
    }


def step_summary(timer, history, num_steps: int, gan) -> dict[str, Any]:
    """Steps per second after step 1, the epoch's mean losses as Keras reports them, model sizes."""
    if timer.num_batches != num_steps + 1:
        raise RuntimeError(f"expected {num_steps + 1} training steps, the epoch had {timer.num_batches}")
    # The timer was written for text; its "sequences" are images here.
    timing = {
        key.replace("sequences", "images"): value
        for key, value in timer.summary((num_steps + 1) * BATCH_SIZE, BATCH_SIZE).items()
    }
    seconds, cpu_seconds = timing["seconds_after_first_batch"], timing["cpu_seconds_after_first_batch"]
    return {
        **timing,
        "num_steps": num_steps,
        "steps_per_second": num_steps / seconds,
        "steps_per_cpu_second": num_steps / cpu_seconds,
        "run_eagerly": bool(gan.run_eagerly),
        "jit_compile": bool(gan.jit_compile),
        "discriminator_params": gan.discriminator.count_params(),
        "generator_params": gan.generator.count_params(),
        "losses": {term: float(history.history[term][-1]) for term in ("d_loss", "g_loss")},
    }


def book_training(folder: str, num_steps: int, seed: int) -> dict[str, Any]:
    """Listings 12.31-12.38 on the folder: one epoch, step 1 plus `num_steps` timed steps."""
    import keras

    from benchmarks import book_gan
    from benchmarks.training_runs import ThroughputAfterFirstBatch

    keras.utils.set_random_seed(seed)
    rss_after_imports = current_rss_bytes()
    dataset, data_seconds = timed(lambda: book_gan.load_dataset(folder))  # lists the files
    rss_after_data = current_rss_bytes()
    gan = book_gan.compile_gan(book_gan.build_discriminator(), book_gan.build_generator())
    timer = ThroughputAfterFirstBatch()
    # GANMonitor saves its samples in the working directory, as in the notebook: a temporary one.
    with tempfile.TemporaryDirectory(prefix="gendl-bench-") as directory, contextlib.chdir(directory):
        history = book_gan.train(gan, dataset, epochs=1, callbacks=[timer], verbose=0)
    return {
        "data_bytes": 0,  # decoded from the files a batch at a time, every epoch
        "data_seconds": data_seconds,
        "rss_after_imports_bytes": rss_after_imports,
        "rss_after_data_bytes": rss_after_data,
        **step_summary(timer, history, num_steps, gan),
    }


def gendl_training(folder: str, num_steps: int, seed: int, ema_decay: float) -> dict[str, Any]:
    """The data of the GAN's data step (a folder) and the model, optimisers and dataset of
    `train_point`, without its per-epoch grids, scores and resume checkpoints (the book's
    GANMonitor runs at the epoch's end, after the timed steps, too), for one epoch."""
    import numpy as np

    from benchmarks.training_runs import ThroughputAfterFirstBatch
    from tasks.gan import model as gendl
    from tasks.image_batches import image_dataset
    from tasks.image_data import read_folder
    from tasks.runtime import configure_runtime

    rss_after_imports = current_rss_bytes()
    # What the data step stores and the train step loads: uint8, decoded once. All of it, so both
    # train on the same images (the data step would hold out 5% for the score).
    (pixels, _, _), data_seconds = timed(lambda: read_folder(Path(folder), IMAGE_SIZE, CHANNELS))
    rss_after_data = current_rss_bytes()
    strategy = configure_runtime(seed, dtype_policy="float32", memory_growth=True, distribute="auto")
    image_shape = pixels.shape[1:]
    with strategy.scope():
        gan = gendl.GAN(
            gendl.build_discriminator(image_shape, DROPOUT, WIDTH),
            gendl.build_generator(image_shape, LATENT_DIM, WIDTH),
            LATENT_DIM,
            LABEL_NOISE,
            ema_decay,
            seed,
        )
        gan.compile(
            d_optimizer=gendl.adam(LEARNING_RATE), g_optimizer=gendl.adam(LEARNING_RATE), jit_compile=False
        )
        gan(np.zeros((1, LATENT_DIM), np.float32))  # as train_point: built before fit
    timer = ThroughputAfterFirstBatch()
    history = gan.fit(
        image_dataset(pixels, BATCH_SIZE, shuffle=True, seed=seed),
        epochs=1,
        callbacks=[timer],
        shuffle=False,
        verbose=0,
    )
    return {
        "data_shape": list(pixels.shape),
        "data_dtype": str(pixels.dtype),
        "data_bytes": pixels.nbytes,
        "data_seconds": data_seconds,
        "rss_after_imports_bytes": rss_after_imports,
        "rss_after_data_bytes": rss_after_data,
        "ema_decay": ema_decay,
        **step_summary(timer, history, num_steps, gan),
    }


# --- Measuring --------------------------------------------------------------------------------


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first run's fields, with median times and throughputs and the largest peak memory."""
    medians = (
        "steps_per_second",
        "steps_per_cpu_second",
        "images_per_second",
        "seconds_after_first_batch",
        "cpu_seconds_after_first_batch",
        "first_batch_seconds",
    )
    return {
        **runs[0],
        **{key: statistics.median(run[key] for run in runs) for key in medians},
        "peak_rss_bytes": max(run["peak_rss_bytes"] for run in runs),
        "runs": runs,
    }


def measure_training(scale: Scale, folder: str) -> dict[str, Any]:
    common = {"folder": folder, "num_steps": scale.num_steps, "seed": SEED}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in IMPLEMENTATIONS}
    for round_index in range(scale.rounds):
        order = list(IMPLEMENTATIONS)
        for name in order if round_index % 2 == 0 else reversed(order):
            function, arguments = IMPLEMENTATIONS[name]
            run = run_in_child("benchmarks.gan", function, {**common, **arguments}, CHILD_ENV)
            print(
                f"  {name}: {run['steps_per_second']:.3f} steps/s, "
                f"{run['steps_per_cpu_second']:.3f} steps/CPU-s",
                flush=True,
            )
            runs[name].append(run)
    return {name: summarise_runs(name_runs) for name, name_runs in runs.items()}


def ratios(training: dict[str, Any]) -> dict[str, float]:
    """gendl against the book, and the moving average against plain gendl."""
    book, gendl, ema = training["book"], training["gendl"], training["gendl_ema"]
    return {
        "speedup": gendl["steps_per_second"] / book["steps_per_second"],
        "cpu_speedup": gendl["steps_per_cpu_second"] / book["steps_per_cpu_second"],
        "ema_speedup": ema["steps_per_second"] / book["steps_per_second"],
        "ema_relative_throughput": ema["steps_per_second"] / gendl["steps_per_second"],
        "ema_relative_cpu_throughput": ema["steps_per_cpu_second"] / gendl["steps_per_cpu_second"],
        "peak_rss_ratio": gendl["peak_rss_bytes"] / book["peak_rss_bytes"],
    }


# --- Report -----------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    training, ratio, scale, info = (
        results["training"],
        results["ratios"],
        results["scale"],
        results["environment"],
    )
    num_steps = scale["num_steps"]
    training_rows = [
        [
            LABELS[name],
            f"**{per_run(result, 'steps_per_second', '.3f')}**",
            per_run(result, "seconds_after_first_batch", ".1f"),
            f"{result['cpu_seconds_after_first_batch']:.1f}",
            f"{result['steps_per_cpu_second']:.3f}",
            f"{result['images_per_second']:.1f}",
            f"{result['first_batch_seconds']:.1f} s",
        ]
        for name, result in training.items()
    ]
    training_rows += [
        [
            "**gendl speed-up** (gendl steps/s / book's)",
            f"**{ratio['speedup']:.2f}x**",
            "",
            "",
            f"{ratio['cpu_speedup']:.2f}x",
            "",
            "",
        ],
        ["gendl with EMA over the book", f"{ratio['ema_speedup']:.2f}x", "", "", "", "", ""],
        [
            "gendl with EMA / without (the average's cost)",
            f"{ratio['ema_relative_throughput']:.3f}x",
            "",
            "",
            f"{ratio['ema_relative_cpu_throughput']:.3f}x",
            "",
            "",
        ],
    ]
    data_cells = {
        "book": "none held: PNG files decoded per batch",
        "gendl": f"uint8, {'x'.join(map(str, training['gendl']['data_shape']))}",
        "gendl_ema": "as gendl",
    }
    memory_rows = [
        [
            LABELS[name],
            data_cells[name],
            mib(result["data_bytes"]),
            f"{result['data_seconds']:.2f} s",
            mib(result["rss_after_imports_bytes"]),
            mib(result["rss_after_data_bytes"]),
            f"**{mib(result['peak_rss_bytes'])}**",
        ]
        for name, result in training.items()
    ]
    memory_rows.append(["gendl / book", "", "", "", "", "", f"**{ratio['peak_rss_ratio']:.2f}x**"])
    model_rows = [
        [
            LABELS[name],
            f"{result['discriminator_params']:,}",
            f"{result['generator_params']:,}",
            ", ".join(f"{run['losses']['d_loss']:.3f}" for run in result["runs"]),
            ", ".join(f"{run['losses']['g_loss']:.3f}" for run in result["runs"]),
        ]
        for name, result in training.items()
    ]
    return "\n\n".join(
        [
            f"GAN benchmark ({results['scale_name']} scale), {info['date']}, {info['cpu_count']} CPUs, "
            f"TensorFlow {info['tensorflow']}, Keras {info['keras']}. {results['num_images']:,} Fashion-MNIST "
            f"images as {IMAGE_SIZE}x{IMAGE_SIZE} RGB PNGs, one epoch: step 1 (traces) + {num_steps} timed "
            f"steps, batch {BATCH_SIZE}, latent_dim {LATENT_DIM}, Adam {LEARNING_RATE:g} (both), label noise "
            f"{LABEL_NOISE:g}, dropout {DROPOUT:g}; {scale['rounds']} run(s) each in its own process.",
            f"a. Training, the {num_steps} steps after step 1 (median, then each run)\n\n"
            + markdown_table(
                [
                    "implementation",
                    "steps/s",
                    "seconds",
                    "CPU seconds",
                    "steps/CPU-s",
                    "images/s",
                    "step 1 (traces)",
                ],
                training_rows,
            ),
            "b. Memory: the training data, and the process's resident memory (peak: largest of the runs)\n\n"
            + markdown_table(
                [
                    "implementation",
                    "training data",
                    "data bytes",
                    "data step",
                    "RSS after imports",
                    "RSS after data",
                    "peak RSS",
                ],
                memory_rows,
            ),
            "c. Models, and the losses after the epoch (Keras's mean over its steps, each run)\n\n"
            + markdown_table(
                ["implementation", "discriminator params", "generator params", "d_loss", "g_loss"],
                model_rows,
            ),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gan", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"a sanity run of {QUICK.num_steps} steps after step 1"
    )
    args = parser.parse_args(argv)
    scale_name, scale = ("quick", QUICK) if args.quick else ("real", REAL)
    if scale.num_images > NUM_SOURCE_IMAGES:
        raise ValueError(
            f"num_steps must be <= {NUM_SOURCE_IMAGES // BATCH_SIZE - 1} (Fashion-MNIST's training "
            f"set in batches of {BATCH_SIZE}), got {scale.num_steps}"
        )

    def measure() -> tuple[dict[str, Any], dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="gendl-bench-gan-") as folder:
            written = run_in_child(
                "benchmarks.gan",
                "write_image_folder",
                {"folder": folder, "num_images": scale.num_images},
                CHILD_ENV,
            )
            return written, measure_training(scale, folder)

    (folder, training), seconds = timed(measure)
    results = {
        "scale_name": scale_name,
        "scale": asdict(scale),
        "num_images": scale.num_images,
        "image_folder": folder,
        "environment": environment(),
        "seed": SEED,
        "batch_size": BATCH_SIZE,
        "latent_dim": LATENT_DIM,
        "learning_rate": LEARNING_RATE,
        "label_noise": LABEL_NOISE,
        "dropout": DROPOUT,
        "width": WIDTH,
        "ema_decay": EMA_DECAY,
        "training": training,
        "ratios": ratios(training),
        "benchmark_seconds": seconds,
    }
    suffix = "_quick" if args.quick else ""
    path = write_results(REPO_ROOT / "benchmarks" / "results" / f"gan{suffix}.json", results)
    print(report(results))
    print(f"\nMeasured in {seconds:.0f} s; results in {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
