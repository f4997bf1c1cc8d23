"""Ray actors of the pipeline: the vLLM student sampler pool and the Ray Serve teacher."""
