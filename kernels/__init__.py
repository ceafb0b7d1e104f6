"""Triton kernels for FP8 block-scaled training and MoE grouped GEMM, each beside a PyTorch reference."""
