"""Variational autoencoder: gendl (`tasks.vae`) against the book's listing, measured in one run.

    KERAS_HOME=/path/to/keras-home python -m benchmarks.vae [--quick]

a. training throughput: one epoch over the same Fashion-MNIST training images, batch 128, Adam
   1e-3, latent_dim 2; the book's VAE eager as printed (`run_eagerly=True`), the same code
   compiled, and gendl's compiled VAE fed by `image_dataset` (uint8 -> float per batch);
b. peak resident memory of each training process and the memory its training data takes;
c. the losses each reaches, in the book's units and in gendl's (the book averages the KL term
   over the latent dimensions, gendl sums it).

Each run is its own interpreter (`run_in_child`), so its peak memory is its own; rounds alternate
the order (book, gendl, book compiled, then the reverse). Prints markdown tables and writes
benchmarks/results/vae[_quick].json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.harness import (
    REPO_ROOT,
    current_rss_bytes,
    environment,
    markdown_table,
    mib,
    peak_rss_bytes,
    per_run,
    run_in_child,
    timed,
    write_results,
)

SEED = 1337
LATENT_DIM = 2  # the book's
LEARNING_RATE = 1e-3  # Adam's default (the book's), params.yaml vae.train.learning_rate
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}
LOSS_TERMS = ("total_loss", "reconstruction_loss", "kl_loss")
NUM_TRAIN_IMAGES = 60_000  # Fashion-MNIST's training set; the book's array continues with the test set


@dataclass(frozen=True)
class Scale:
    num_train_images: int  # images in the timed epoch, the first of Fashion-MNIST's training set
    batch_size: int
    rounds: int  # each round trains every implementation once, in alternating order


REAL = Scale(num_train_images=60_000, batch_size=128, rounds=2)
QUICK = Scale(num_train_images=6_000, batch_size=128, rounds=2)

# name: (child function, its own arguments); the order of the first round
IMPLEMENTATIONS = {
    "book": ("book_training", {"run_eagerly": True}),
    "gendl": ("gendl_training", {"latent_dim": LATENT_DIM, "learning_rate": LEARNING_RATE}),
    "book_compiled": ("book_training", {"run_eagerly": False}),
}
LABELS = {
    "book": "book: `run_eagerly=True` (as printed)",
    "gendl": "gendl: `VAE`, compiled, `image_dataset`",
    "book_compiled": "book's code, compiled (`run_eagerly=False`)",
}


# --- The runs each child process makes --------------------------------------------------------


def epoch_summary(timer, history, num_images: int, batch_size: int, vae) -> dict[str, Any]:
    """Throughput after the first batch and the epoch's mean losses, as Keras reports them."""
    # The timer was written for text; its "sequences" are images here.
    timing = {
        key.replace("sequences", "images"): value
        for key, value in timer.summary(num_images, batch_size).items()
    }
    return {
        **timing,
        "run_eagerly": bool(vae.run_eagerly),
        "jit_compile": bool(vae.jit_compile),
        "losses": {term: float(history.history[term][-1]) for term in LOSS_TERMS},
    }


def book_training(num_images: int, batch_size: int, seed: int, run_eagerly: bool) -> dict[str, Any]:
    """Listing 12.28: the book's data (train + test as float32), then one epoch on the first images."""
    import keras

    from benchmarks import book_vae
    from benchmarks.training_runs import ThroughputAfterFirstBatch

    keras.utils.set_random_seed(seed)
    rss_after_imports = current_rss_bytes()
    # x_train and x_test stay alive through fit, as the notebook's globals do.
    (mnist_digits, x_train, x_test), data_seconds = timed(book_vae.load_data)
    rss_after_data, peak_after_data = current_rss_bytes(), peak_rss_bytes()
    vae = book_vae.compile_vae(book_vae.build_encoder(), book_vae.build_decoder(), run_eagerly)
    timer = ThroughputAfterFirstBatch()
    history = book_vae.train(
        vae, mnist_digits[:num_images], epochs=1, batch_size=batch_size, verbose=0, callbacks=[timer]
    )
    return {
        "data_shape": list(mnist_digits.shape),
        "data_dtype": str(mnist_digits.dtype),
        "data_bytes": mnist_digits.nbytes,
        "source_bytes": x_train.nbytes + x_test.nbytes,  # the uint8 arrays load_data returned
        "data_seconds": data_seconds,
        "rss_after_imports_bytes": rss_after_imports,
        "rss_after_data_bytes": rss_after_data,
        "peak_rss_after_data_bytes": peak_after_data,  # loading's temporaries included
        **epoch_summary(timer, history, num_images, batch_size, vae),
    }


def gendl_training(
    num_images: int, batch_size: int, seed: int, latent_dim: int, learning_rate: float
) -> dict[str, Any]:
    """The model, optimiser and dataset of `tasks.vae.model.train_point`, without its validation pass and
    per-epoch checkpoint and CSV callbacks (the book has none), for one epoch on the first images."""
    import keras

    from benchmarks.training_runs import ThroughputAfterFirstBatch
    from tasks.image_batches import image_dataset
    from tasks.image_data import conform, load_keras_dataset
    from tasks.runtime import configure_runtime
    from tasks.vae.model import VAE, build_decoder, build_encoder

    rss_after_imports = current_rss_bytes()

    def load():
        # What the data step stores and the train step loads: uint8 with a channel axis.
        train, _ = load_keras_dataset("fashion_mnist", "vae")
        return conform(train.images, image_size=28, channels=1)

    train_images, data_seconds = timed(load)
    rss_after_data, peak_after_data = current_rss_bytes(), peak_rss_bytes()
    strategy = configure_runtime(seed, dtype_policy="float32", memory_growth=True, distribute="auto")
    image_shape = train_images.shape[1:]
    with strategy.scope():
        vae = VAE(
            build_encoder(image_shape, latent_dim),
            build_decoder(image_shape, latent_dim),
            beta=1.0,
            seed=seed,
        )
        vae.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=False)
    timer = ThroughputAfterFirstBatch()
    history = vae.fit(
        image_dataset(train_images[:num_images], batch_size, shuffle=True, seed=seed),
        epochs=1,
        callbacks=[timer],
        shuffle=False,
        verbose=0,
    )
    return {
        "data_shape": list(train_images.shape),
        "data_dtype": str(train_images.dtype),
        "data_bytes": train_images.nbytes,
        "data_seconds": data_seconds,
        "rss_after_imports_bytes": rss_after_imports,
        "rss_after_data_bytes": rss_after_data,
        "peak_rss_after_data_bytes": peak_after_data,  # loading's temporaries included
        **epoch_summary(timer, history, num_images, batch_size, vae),
    }


# --- Measuring --------------------------------------------------------------------------------


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first run's fields, with median times and throughputs and the largest peak memory."""
    medians = (
        "images_per_second",
        "images_per_cpu_second",
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


def measure_training(scale: Scale) -> dict[str, Any]:
    common = {"num_images": scale.num_train_images, "batch_size": scale.batch_size, "seed": SEED}
    if scale.num_train_images > NUM_TRAIN_IMAGES:
        raise ValueError(
            f"num_train_images must be <= {NUM_TRAIN_IMAGES:,} (Fashion-MNIST's training set), "
            f"got {scale.num_train_images:,}: beyond it the book would train on test images"
        )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in IMPLEMENTATIONS}
    for round_index in range(scale.rounds):
        order = list(IMPLEMENTATIONS)
        for name in order if round_index % 2 == 0 else reversed(order):
            function, arguments = IMPLEMENTATIONS[name]
            run = run_in_child("benchmarks.vae", function, {**common, **arguments}, CHILD_ENV)
            print(f"  {name}: {run['seconds_after_first_batch']:.1f} s after batch 1", flush=True)
            runs[name].append(run)
    return {name: summarise_runs(name_runs) for name, name_runs in runs.items()}


def elbo_terms(result: dict[str, Any], kl_summed: bool) -> dict[str, float]:
    """The epoch's losses in gendl's units: KL summed over the latent dimensions, -ELBO per image."""
    losses = result["losses"]
    kl_sum = losses["kl_loss"] if kl_summed else losses["kl_loss"] * LATENT_DIM
    return {"kl_summed": kl_sum, "negative_elbo": losses["reconstruction_loss"] + kl_sum}


def ratios(training: dict[str, Any]) -> dict[str, float]:
    """gendl against the book; each is "higher is better for gendl"."""
    book, compiled, gendl = training["book"], training["book_compiled"], training["gendl"]
    return {
        "speedup": book["seconds_after_first_batch"] / gendl["seconds_after_first_batch"],
        "cpu_speedup": book["cpu_seconds_after_first_batch"] / gendl["cpu_seconds_after_first_batch"],
        "speedup_over_book_compiled": compiled["seconds_after_first_batch"]
        / gendl["seconds_after_first_batch"],
        "book_compiled_speedup": book["seconds_after_first_batch"] / compiled["seconds_after_first_batch"],
        "data_memory_reduction": book["data_bytes"] / gendl["data_bytes"],
        "peak_rss_reduction": book["peak_rss_bytes"] / gendl["peak_rss_bytes"],
    }


# --- Report -----------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    training, ratio, scale, info = (
        results["training"],
        results["ratios"],
        results["scale"],
        results["environment"],
    )
    training_rows = [
        [
            LABELS[name],
            f"**{per_run(result, 'seconds_after_first_batch', '.1f')}**",
            f"{result['cpu_seconds_after_first_batch']:.1f}",
            per_run(result, "images_per_second", ",.0f"),
            f"{result['images_per_cpu_second']:,.0f}",
            f"{result['first_batch_seconds']:.1f} s",
        ]
        for name, result in training.items()
    ]
    training_rows += [
        [
            "**gendl speed-up** (book s / gendl s)",
            f"**{ratio['speedup']:.2f}x**",
            f"{ratio['cpu_speedup']:.2f}x",
            "",
            "",
            "",
        ],
        [
            "gendl over the book's code compiled",
            f"{ratio['speedup_over_book_compiled']:.2f}x",
            "",
            "",
            "",
            "",
        ],
        ["book compiled over book eager", f"{ratio['book_compiled_speedup']:.2f}x", "", "", "", ""],
    ]
    data_cells = {
        "book": "train + test, float32 (`mnist_digits`)",
        "gendl": "train, uint8 (floats made per batch)",
        "book_compiled": "as the book",
    }
    memory_rows = [
        [
            LABELS[name],
            f"{data_cells[name]}, {'x'.join(map(str, result['data_shape']))}",
            mib(result["data_bytes"]),
            mib(result["rss_after_imports_bytes"]),
            mib(result["rss_after_data_bytes"]),
            mib(result["peak_rss_after_data_bytes"]),
            f"**{mib(result['peak_rss_bytes'])}**",
        ]
        for name, result in training.items()
    ]
    memory_rows.append(
        [
            "book / gendl",
            "",
            f"**{ratio['data_memory_reduction']:.2f}x smaller**",
            "",
            "",
            "",
            f"**{ratio['peak_rss_reduction']:.2f}x smaller**",
        ]
    )
    loss_rows = []
    for name, result in training.items():
        losses, units = result["losses"], elbo_terms(result, kl_summed=name == "gendl")
        loss_rows.append(
            [
                LABELS[name],
                f"{losses['total_loss']:.2f}",
                f"{losses['reconstruction_loss']:.2f}",
                f"{losses['kl_loss']:.3f}" + (" (sum)" if name == "gendl" else " (mean over dims)"),
                f"{units['kl_summed']:.3f}",
                f"{units['negative_elbo']:.2f}",
            ]
        )
    return "\n\n".join(
        [
            f"VAE benchmark ({results['scale_name']} scale), {info['date']}, {info['cpu_count']} CPUs, "
            f"TensorFlow {info['tensorflow']}, Keras {info['keras']}. Fashion-MNIST, one epoch over the "
            f"first {scale['num_train_images']:,} training images, batch {scale['batch_size']}, Adam "
            f"{LEARNING_RATE:g}, latent_dim {LATENT_DIM}, {scale['rounds']} run(s) each in its own process.",
            "a. Training, from the end of batch 1 to the end of the epoch (median, then each run)\n\n"
            + markdown_table(
                ["implementation", "seconds", "CPU seconds", "images/s", "images/CPU-s", "first batch"],
                training_rows,
            ),
            "b. Memory: the training data, and the process's resident memory (peak: largest of the runs)\n\n"
            + markdown_table(
                [
                    "implementation",
                    "training data",
                    "data bytes",
                    "RSS after imports",
                    "RSS after data",
                    "peak by end of loading",
                    "peak RSS",
                ],
                memory_rows,
            ),
            "c. Losses after the epoch (Keras's mean over the epoch's batches, first run); the book's KL is "
            f"averaged over the {LATENT_DIM} latent dimensions, gendl's summed, so 'KL summed' and '-ELBO' "
            "put both in gendl's units\n\n"
            + markdown_table(
                ["implementation", "total", "reconstruction", "KL as reported", "KL summed", "-ELBO"],
                loss_rows,
            ),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vae", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a sanity run on 6,000 images")
    args = parser.parse_args(argv)
    scale_name, scale = ("quick", QUICK) if args.quick else ("real", REAL)

    training, seconds = timed(lambda: measure_training(scale))
    results = {
        "scale_name": scale_name,
        "scale": asdict(scale),
        "environment": environment(),
        "seed": SEED,
        "latent_dim": LATENT_DIM,
        "learning_rate": LEARNING_RATE,
        "training": training,
        "ratios": ratios(training),
        "benchmark_seconds": seconds,
    }
    suffix = "_quick" if args.quick else ""
    path = write_results(REPO_ROOT / "benchmarks" / "results" / f"vae{suffix}.json", results)
    print(report(results))
    print(f"\nMeasured in {seconds:.0f} s; results in {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
