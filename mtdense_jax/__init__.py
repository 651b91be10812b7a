"""mtdense_jax: multi-task dense scene prediction in JAX/Flax."""
