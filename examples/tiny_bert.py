"""The bundled example: a small BERT encoder (random weights, built from a config —
no model hub needed). A `kiln ir` model file: `make_model()` returns the module, its
example inputs and the dims to keep symbolic.

    kiln ir examples/tiny_bert.py
"""
from __future__ import annotations

import torch
from transformers import BertConfig, BertModel

CONFIG = dict(vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
              intermediate_size=1024, max_position_embeddings=256)


def make_model(batch: int = 2, seq: int = 64):
    torch.manual_seed(0)
    model = BertModel(BertConfig(**CONFIG), add_pooling_layer=True).eval()
    input_ids = torch.randint(0, CONFIG["vocab_size"], (batch, seq))
    attention_mask = torch.ones(batch, seq, dtype=torch.int64)
    attention_mask[-1, seq // 2:] = 0     # one padded sequence
    dynamic_dims = {"input_ids": {0: "batch", 1: "seq"},
                    "attention_mask": {0: "batch", 1: "seq"}}
    return model, (input_ids, attention_mask), dynamic_dims
