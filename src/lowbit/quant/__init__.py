"""Weight quantizers: Q1_0, ternary, strong 1-bit methods, and a one-call API (lowbit.quant.weights)."""
