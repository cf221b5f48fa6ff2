"""kiln's intermediate representation: typed SSA graphs with symbolic dims, the op
registry, the verifier, the `.kir` text form and the reference interpreter.

Imports nothing from the rest of kiln but `kiln.errors`.
"""
from . import ops  # noqa: F401  (registers every op)
from .builder import GraphBuilder
from .dtypes import DType, dtype
from .graph import Graph, Node, Value, graphs_equal
from .interpret import example_inputs, interpret
from .parser import load, parse, save
from .printer import print_graph
from .registry import all_ops, get_op, ops_with
from .types import TensorType, tensor
from .verify import verify

__all__ = ["DType", "Graph", "GraphBuilder", "Node", "TensorType", "Value", "all_ops", "dtype",
           "example_inputs", "get_op", "graphs_equal", "interpret", "load", "ops_with", "parse",
           "print_graph", "save", "tensor", "verify"]
