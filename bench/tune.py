"""Fills the host CPU's tuning database for the benchmark models of `bench.models`:

    python -m bench.tune [--models mlp,bert,gpt2,resnet,llama] [--rounds 5] [--retune]
                         [--passes SPEC] [--in-model]

Each model is built as `bench.models` builds it, imported, run through the default
pass pipeline (or `--passes`), and its contraction workloads tuned (`kiln.codegen.tvm.tune`, as
`kiln tune MODEL` does) into kiln/codegen/tvm/tuning/<cpu>.json (or $KILN_TUNING_DB).
With `--in-model` the model is compiled and each workload's candidates are measured in
its compiled step sequence (`tune_in_model`), replacing what the database held for it.
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
    parser.add_argument("--in-model", action="store_true",
                        help="measure each workload in the compiled model's steps")
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
        if args.in_model:
            print(f"== {case.name} (in the model)", flush=True)
            tune_model_in_place(case, args, db)
            db.save(path)
            continue
        graph = import_model(case.model, case.inputs)
        PassManager(args.passes or DEFAULT_PIPELINE).run(graph)
        print(f"== {case.name}", flush=True)
        tune_graph(graph, db, rounds=args.rounds, retune=args.retune,
                   log=lambda line: print(line, flush=True))
        db.save(path)
    print(f"wrote {path}: {len(db.records)} workloads")


def tune_model_in_place(case, args: argparse.Namespace, db) -> None:
    """`tune_in_model` over the compiled model's steps, each with the node it runs."""
    import kiln
    from kiln.codegen.tvm.tune import tune_in_model
    compiled = kiln.compile(case.model, case.inputs, passes=args.passes)
    executor = compiled._executor      # as bench/inmodel.py: the steps with their buffers
    steps = executor.step_arguments(executor.prepare(*[t.numpy() for t in case.inputs]))
    producer = {v.name: n for n in compiled.graph.nodes for v in n.outputs}
    tune_in_model(compiled.graph,
                  [(producer[step.outputs[0]], kernel, args) for step, kernel, args in steps],
                  db, rounds=args.rounds, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
