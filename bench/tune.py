"""Fills the host CPU's tuning database for the benchmark models of `bench.models`:

    python -m bench.tune [--models mlp,bert,gpt2,resnet,llama] [--rounds 5] [--retune]
                         [--passes SPEC]

Each model is built as `bench.models` builds it, imported, run through the default
pass pipeline (or `--passes`), and its contraction workloads tuned (`kiln.codegen.tvm.tune`, as
`kiln tune MODEL` does) into kiln/codegen/tvm/tuning/<cpu>.json (or $KILN_TUNING_DB).
"""
from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,bert,gpt2,resnet,llama")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--retune", action="store_true")
    parser.add_argument("--passes", default=None, help="the pass pipeline (default: kiln's)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from kiln.codegen.tvm import tuning
    from kiln.codegen.tvm.tune import tune_graph
    from kiln.frontend.torch import import_model
    from kiln.passes.manager import DEFAULT_PIPELINE, PassManager

    from .models import make_case
    cpu = tuning.host_cpu()
    path = tuning.default_path(cpu)
    db = tuning.TuningDatabase.load(path, cpu)
    for name in args.models.split(","):
        case = make_case(name)
        graph = import_model(case.model, case.inputs)
        PassManager(args.passes or DEFAULT_PIPELINE).run(graph)
        print(f"== {case.name}", flush=True)
        tune_graph(graph, db, rounds=args.rounds, retune=args.retune,
                   log=lambda line: print(line, flush=True))
        db.save(path)
    print(f"wrote {path}: {len(db.records)} workloads")


if __name__ == "__main__":
    main()
