"""`llama-operator demo` (`demo`) and the tiny random Llama it, the tests and the benchmarks
fine-tune (`tinymodel`)."""
