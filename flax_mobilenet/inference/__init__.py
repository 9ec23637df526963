"""Inference: BatchNorm folding, ahead-of-time compilation and the XLA:CPU settings that make it fast."""
from .compile import (CPU_COMPILER_OPTIONS, DEFAULT_PRECISION, PRECISIONS, check_precision, compile_inference,
                      enable_compilation_cache, folded_model, keep_freed_host_memory, matmul_precision,
                      split_cpu_into_devices)
from .fold import batchnorm_eps, fold_batchnorm

__all__ = ["CPU_COMPILER_OPTIONS", "DEFAULT_PRECISION", "PRECISIONS", "batchnorm_eps", "check_precision", "compile_inference",
           "enable_compilation_cache", "fold_batchnorm", "folded_model", "keep_freed_host_memory", "matmul_precision",
           "split_cpu_into_devices"]
