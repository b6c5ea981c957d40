"""Text generation: gendl (`tasks.text.char_lstm`) against the book's listing, measured in one run.

    KERAS_HOME=/path/to/keras-home python -m benchmarks.text_generation [--quick]

a. sampling speed (characters per second) at the temperatures 0.2, 0.5, 1.0, 1.2, with the
   same weights in both models;
b. memory of the training data: the book's one-hot arrays against gendl's integer ids;
c. training throughput (sequences per second) and peak resident memory, each implementation
   in its own process.

Prints markdown tables and writes benchmarks/results/text_generation[_quick].json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from benchmarks import book_text
from benchmarks.harness import (
    REPO_ROOT,
    environment,
    markdown_table,
    mib,
    run_in_child,
    time_calls,
    timed,
    write_results,
)
from tasks.text.char_lstm.model import Generated, build_char_lstm, generate_text, make_generator
from tasks.text.corpus import Vocabulary, build_vocabulary, corpus_seed, read_corpus

SEED = 1337
VALIDATION_SPLIT = 0.1  # params.yaml text.data.validation_split
TARGETS = {"sampling_speedup": 100.0, "data_memory_reduction": 20.0, "training_speedup": 1.0}


@dataclass(frozen=True)
class Scale:
    max_chars: int  # corpus characters used; 0 = all
    book_chars_per_temperature: int  # the book manages ~10-20 characters per second
    gendl_chars_per_temperature: int
    gendl_repeats: int  # timed generate calls after the warm-up one
    num_train_sequences: int  # sequences in the timed training epoch
    batch_size: int
    training_rounds: int  # each round trains the book and gendl once, in ABBA order across rounds


REAL = Scale(
    max_chars=0,
    book_chars_per_temperature=50,
    gendl_chars_per_temperature=400,
    gendl_repeats=5,
    num_train_sequences=40_000,
    batch_size=book_text.BATCH_SIZE,
    training_rounds=2,
)
QUICK = Scale(
    max_chars=60_000,
    book_chars_per_temperature=5,
    gendl_chars_per_temperature=100,
    gendl_repeats=2,
    num_train_sequences=2_000,
    batch_size=book_text.BATCH_SIZE,
    training_rounds=1,
)


# --- a. Sampling speed --------------------------------------------------------------------------


def twin_models(vocab_size: int) -> tuple[keras.Model, keras.Model]:
    """gendl's model with random weights and the book's Sequential model holding the same weights."""
    keras.utils.set_random_seed(SEED)
    gendl_model = build_char_lstm(vocab_size, book_text.UNITS)
    book_model = book_text.build_model(book_text.MAXLEN, vocab_size)
    # gendl's first weight is its frozen identity embedding (the one-hot encoding); the rest are
    # the LSTM's kernel, recurrent kernel and bias and the Dense kernel and bias, as the book's.
    book_model.set_weights(gendl_model.get_weights()[1:])
    return gendl_model, book_model


def prediction_difference(
    gendl_model: keras.Model, book_model: keras.Model, seed_text: str, vocabulary: Vocabulary
) -> float:
    """Largest difference between the two models' next-character distributions after the seed."""
    one_hot = np.zeros((1, book_text.MAXLEN, vocabulary.size))
    one_hot[0, np.arange(len(seed_text)), vocabulary.encode(seed_text)] = 1.0
    book_probs = book_model.predict(one_hot, verbose=0)[0]
    gendl_probs = gendl_model.predict(vocabulary.encode(seed_text)[None].astype(np.int32), verbose=0)[0]
    return float(np.max(np.abs(book_probs - gendl_probs)))


def measure_book_sampling(
    model: keras.Model, seed_text: str, chars: list[str], char_indices: dict[str, int], num_chars: int
) -> dict[str, Any]:
    """The book's loop, one `model.predict` per character, timed per temperature."""
    np.random.seed(SEED)
    # One character first: the first predict builds the predict function.
    _, first_seconds = timed(
        lambda: book_text.generate_at_temperature(model, seed_text, 1.0, 1, chars, char_indices)
    )
    per_temperature = {}
    for temperature in book_text.TEMPERATURES:
        text, seconds = timed(
            lambda: book_text.generate_at_temperature(
                model, seed_text, temperature, num_chars, chars, char_indices
            )
        )
        per_temperature[str(temperature)] = {
            "seconds": seconds,
            "chars_per_second": num_chars / seconds,
            "text": text,
        }
    total_seconds = sum(result["seconds"] for result in per_temperature.values())
    return {
        "chars_per_temperature": num_chars,
        "first_char_seconds": first_seconds,
        "per_temperature": per_temperature,
        "chars_per_second": num_chars * len(book_text.TEMPERATURES) / total_seconds,
    }


def measure_gendl_sampling(
    model: keras.Model, seed_text: str, vocabulary: Vocabulary, num_chars: int, repeats: int
) -> dict[str, Any]:
    """`generate_text` at all temperatures in one batch, and one temperature at a time."""
    generator = make_generator(model, jit_compile=False)
    temperatures = list(book_text.TEMPERATURES)

    def generate(batch_temperatures: Sequence[float]) -> list[Generated]:
        return generate_text(generator, vocabulary, seed_text, batch_temperatures, num_chars, SEED)

    batched = time_calls(lambda: generate(temperatures), warmup=1, repeats=repeats)
    # The same traced function serves batch 1 (its signature has a dynamic batch dimension).
    one_at_a_time = time_calls(lambda: [generate([t]) for t in temperatures], warmup=0, repeats=repeats)
    num_generated = num_chars * len(temperatures)
    return {
        "chars_per_temperature": num_chars,
        "first_call_seconds": batched.warmup_seconds[0],
        "first_call_chars_per_second": num_generated / batched.warmup_seconds[0],
        "batched_seconds": batched.seconds,
        "chars_per_second": num_generated / batched.median_seconds,
        "one_at_a_time_seconds": one_at_a_time.seconds,
        "one_at_a_time_chars_per_second": num_generated / one_at_a_time.median_seconds,
        "texts": {str(sample.temperature): sample.text for sample in generate(temperatures)},
    }


def measure_sampling(corpus_path: str, scale: Scale) -> dict[str, Any]:
    text = read_corpus(Path(corpus_path))
    text = text[: scale.max_chars] if scale.max_chars else text
    vocabulary = build_vocabulary(text)
    book_chars, book_char_indices = book_text.char_vocabulary(
        book_text.read_text(corpus_path, scale.max_chars)
    )
    if book_chars != vocabulary.chars:
        raise RuntimeError("the book's and gendl's vocabularies differ: the comparison would not be fair")
    seed_text = corpus_seed(vocabulary.encode(text), vocabulary, book_text.MAXLEN, SEED)
    gendl_model, book_model = twin_models(vocabulary.size)
    return {
        "seed_text": seed_text,
        "max_prediction_difference": prediction_difference(gendl_model, book_model, seed_text, vocabulary),
        "book": measure_book_sampling(
            book_model, seed_text, book_chars, book_char_indices, scale.book_chars_per_temperature
        ),
        "gendl": measure_gendl_sampling(
            gendl_model, seed_text, vocabulary, scale.gendl_chars_per_temperature, scale.gendl_repeats
        ),
    }


# --- b. and c. Training data memory, throughput and peak memory ---------------------------------


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first run's fields, with median throughputs and the largest peak memory of all runs."""
    return {
        **runs[0],
        "sequences_per_second": statistics.median(run["sequences_per_second"] for run in runs),
        "sequences_per_cpu_second": statistics.median(run["sequences_per_cpu_second"] for run in runs),
        "peak_rss_bytes": max(run["peak_rss_bytes"] for run in runs),
        "runs": runs,
    }


def measure_training(corpus_path: str, scale: Scale) -> dict[str, Any]:
    """One epoch over the same first sequences per run, each run in a fresh process.

    Rounds alternate the order (book, gendl, then gendl, book), so a burst of other work on the
    machine does not always land on the same implementation.
    """
    common = {
        "corpus_path": corpus_path,
        "max_chars": scale.max_chars,
        "num_sequences": scale.num_train_sequences,
        "batch_size": scale.batch_size,
        "seed": SEED,
    }
    arguments = {
        "book_training": common,
        "gendl_training": {
            **common,
            "maxlen": book_text.MAXLEN,
            "step": book_text.STEP,
            "units": book_text.UNITS,
            "learning_rate": book_text.LEARNING_RATE,
            "validation_split": VALIDATION_SPLIT,
        },
    }
    runs: dict[str, list[dict[str, Any]]] = {"book_training": [], "gendl_training": []}
    for round_index in range(scale.training_rounds):
        order = ["book_training", "gendl_training"]
        for function in order if round_index % 2 == 0 else reversed(order):
            runs[function].append(
                run_in_child(
                    "benchmarks.training_runs", function, arguments[function], {"TF_CPP_MIN_LOG_LEVEL": "2"}
                )
            )
    return {"book": summarise_runs(runs["book_training"]), "gendl": summarise_runs(runs["gendl_training"])}


# --- Report ---------------------------------------------------------------------------------------


def ratios(sampling: dict[str, Any], training: dict[str, Any]) -> dict[str, float]:
    """gendl against the book; each is "higher is better for gendl"."""
    return {
        "sampling_speedup": sampling["gendl"]["chars_per_second"] / sampling["book"]["chars_per_second"],
        "sampling_speedup_one_at_a_time": sampling["gendl"]["one_at_a_time_chars_per_second"]
        / sampling["book"]["chars_per_second"],
        "data_memory_reduction": training["book"]["data_bytes"] / training["gendl"]["data_bytes"],
        "training_speedup": training["gendl"]["sequences_per_second"]
        / training["book"]["sequences_per_second"],
        "training_cpu_efficiency": training["gendl"]["sequences_per_cpu_second"]
        / training["book"]["sequences_per_cpu_second"],
        "peak_rss_reduction": training["book"]["peak_rss_bytes"] / training["gendl"]["peak_rss_bytes"],
    }


def targets_met(ratio: dict[str, float]) -> dict[str, bool]:
    return {name: ratio[name] >= target for name, target in TARGETS.items()}


def throughput_per_run(result: dict[str, Any]) -> str:
    each = ", ".join(f"{run['sequences_per_second']:,.0f}" for run in result["runs"])
    return f"{result['sequences_per_second']:,.0f} ({each})"


def verdict(name: str, ratio: dict[str, float]) -> str:
    met = ratio[name] >= TARGETS[name]
    return f"{'met' if met else 'MISSED'} (target >= {TARGETS[name]:g}x)"


def report(results: dict[str, Any]) -> str:
    sampling, training, ratio = results["sampling"], results["training"], results["ratios"]
    book_sampling, gendl_sampling = sampling["book"], sampling["gendl"]
    book_train, gendl_train = training["book"], training["gendl"]
    environment_info = results["environment"]
    sampling_rows = [
        [
            f"book, T={temperature}",
            f"{book_sampling['chars_per_temperature']} chars",
            f"{result['chars_per_second']:,.1f}",
            "",
        ]
        for temperature, result in book_sampling["per_temperature"].items()
    ]
    sampling_rows += [
        [
            "book, all four",
            f"{4 * book_sampling['chars_per_temperature']} chars",
            f"{book_sampling['chars_per_second']:,.1f}",
            "1x",
        ],
        [
            "gendl, four temperatures in one batch",
            f"{4 * gendl_sampling['chars_per_temperature']} chars",
            f"{gendl_sampling['chars_per_second']:,.0f}",
            f"**{ratio['sampling_speedup']:,.0f}x** {verdict('sampling_speedup', ratio)}",
        ],
        [
            "gendl, one temperature at a time",
            f"{4 * gendl_sampling['chars_per_temperature']} chars",
            f"{gendl_sampling['one_at_a_time_chars_per_second']:,.0f}",
            f"{ratio['sampling_speedup_one_at_a_time']:,.0f}x",
        ],
        [
            "gendl, first call (tracing included)",
            f"{4 * gendl_sampling['chars_per_temperature']} chars",
            f"{gendl_sampling['first_call_chars_per_second']:,.0f}",
            f"{gendl_sampling['first_call_chars_per_second'] / book_sampling['chars_per_second']:,.0f}x "
            f"({gendl_sampling['first_call_seconds']:.2f} s)",
        ],
    ]
    memory_rows = [
        [
            "book: one-hot x + y (bool)",
            f"{book_train['total_sequences']:,} sequences",
            mib(book_train["data_bytes"]),
            f"{book_train['data_seconds']:.1f} s",
            "1x",
        ],
        [
            "gendl: train + validation ids (uint8)",
            "windows made per batch",
            mib(gendl_train["data_bytes"]),
            f"{gendl_train['data_seconds']:.1f} s",
            f"**{ratio['data_memory_reduction']:,.0f}x smaller** {verdict('data_memory_reduction', ratio)}",
        ],
    ]
    training_rows = [
        [
            name,
            f"{result['num_sequences']:,}",
            throughput_per_run(result),
            f"{result['sequences_per_cpu_second']:,.0f}",
            f"{result['first_batch_seconds']:.1f} s",
            mib(result["rss_after_imports_bytes"]),
            mib(result["rss_after_data_bytes"]),
            mib(result["peak_rss_bytes"]),
        ]
        for name, result in [
            ("book: fit(x[:N], y[:N])", book_train),
            ("gendl: fit(sequence_dataset)", gendl_train),
        ]
    ]
    training_rows.append(
        [
            "gendl / book",
            "",
            f"**{ratio['training_speedup']:.3f}x** {verdict('training_speedup', ratio)}",
            f"{ratio['training_cpu_efficiency']:.3f}x",
            "",
            "",
            "",
            f"{ratio['peak_rss_reduction']:.1f}x smaller",
        ]
    )
    return "\n\n".join(
        [
            f"Text generation benchmark ({results['scale_name']} scale), {environment_info['date']}, "
            f"{environment_info['cpu_count']} CPUs, TensorFlow {environment_info['tensorflow']}, "
            f"Keras {environment_info['keras']}. Same weights in both models: next-character "
            f"distributions differ by at most {sampling['max_prediction_difference']:.1e}.",
            "Sampling speed\n\n"
            + markdown_table(["implementation", "generated", "chars/s", "gendl / book"], sampling_rows),
            "Training data in memory\n\n"
            + markdown_table(
                ["implementation", "covers", "bytes", "build time", "gendl / book"], memory_rows
            ),
            f"Training, one epoch, batch {results['scale']['batch_size']}, {results['scale']['training_rounds']} "
            "run(s) each (throughput from the end of batch 1: median, then each run)\n\n"
            + markdown_table(
                [
                    "implementation",
                    "sequences",
                    "sequences/s",
                    "sequences/CPU-s",
                    "first batch",
                    "RSS after imports",
                    "RSS after data",
                    "peak RSS",
                ],
                training_rows,
            ),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.text_generation", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a sanity run of about two minutes")
    args = parser.parse_args(argv)
    scale_name, scale = ("quick", QUICK) if args.quick else ("real", REAL)

    corpus_path = book_text.corpus_path()
    (sampling, training), seconds = timed(
        lambda: (measure_sampling(corpus_path, scale), measure_training(corpus_path, scale))
    )
    results = {
        "scale_name": scale_name,
        "scale": asdict(scale),
        "environment": environment(),
        "sampling": sampling,
        "training": training,
        "benchmark_seconds": seconds,
    }
    results["ratios"] = ratios(sampling, training)
    results["targets_met"] = targets_met(results["ratios"])
    suffix = "_quick" if args.quick else ""
    path = write_results(REPO_ROOT / "benchmarks" / "results" / f"text_generation{suffix}.json", results)
    print(report(results))
    print(f"\nMeasured in {seconds:.0f} s; results in {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
