"""Code generation: kiln IR groups to TVM (CPU, CUDA) and Triton kernels."""
