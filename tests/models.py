"""Small test models shared by the frontend and compiler tests: hand-written MLP and
CNN, and `transformers` BERT, GPT-2, Llama and ResNet built from small configs with
random weights (no model hub)."""
from __future__ import annotations

import torch


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(20, 64)
        self.fc2 = torch.nn.Linear(64, 32)
        self.head = torch.nn.Linear(32, 5)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.fc1(x))
        h = torch.tanh(self.fc2(h))
        return torch.log_softmax(self.head(h), dim=-1)


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
        self.bn2 = torch.nn.BatchNorm2d(16)
        self.pool = torch.nn.MaxPool2d(2)
        self.avg = torch.nn.AvgPool2d(3, stride=1, padding=1)
        self.gap = torch.nn.AdaptiveAvgPool2d((2, 2))
        self.fc = torch.nn.Linear(16 * 4, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.avg(torch.nn.functional.silu(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(self.gap(x), 1))


def randomize_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial running statistics, so batch norm is not the identity."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def bert():
    from transformers import BertConfig, BertModel
    return BertModel(BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=128,
                                max_position_embeddings=64))


def gpt2():
    from transformers import GPT2Config, GPT2Model
    return GPT2Model(GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                use_cache=False, bos_token_id=0, eos_token_id=0))


def llama():
    from transformers import LlamaConfig, LlamaModel
    return LlamaModel(LlamaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=128, max_position_embeddings=64,
                                  use_cache=False))


def resnet():
    from transformers import ResNetConfig, ResNetModel
    return ResNetModel(ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32],
                                    depths=[1, 1], layer_type="basic"))


def token_ids(batch: int, seq: int) -> tuple[torch.Tensor]:
    return (torch.randint(0, 100, (batch, seq)),)


def image(batch: int, seq: int) -> tuple[torch.Tensor]:
    return (torch.randn(batch, 3, 64, 64),)


TEXT_DIMS = {"input_ids": {0: "batch", 1: "seq"}}
MODELS = {   # name -> (build, inputs(batch, seq), dynamic_dims, other (batch, seq) sizes)
    "bert": (bert, token_ids, TEXT_DIMS, [(3, 5), (1, 17)]),
    "gpt2": (gpt2, token_ids, TEXT_DIMS, [(3, 5), (1, 17)]),
    "llama": (llama, token_ids, TEXT_DIMS, [(3, 5), (1, 17)]),
    "resnet": (resnet, image, {"pixel_values": {0: "batch"}}, [(3, None), (1, None)]),
}
