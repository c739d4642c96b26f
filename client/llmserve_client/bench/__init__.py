"""`llmserve-bench`: load generator and benchmark suite for llmserve and its peers.

`run` drives one server (llmserve gRPC, `vllm serve`'s OpenAI API, llmserve HTTP), `inprocess`
drives vLLM's AsyncLLM without a network (the limit), and `suite` runs every target one after
another and writes BENCHMARKS.md with a plot.
"""
