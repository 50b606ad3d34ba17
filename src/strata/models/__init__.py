"""Pure nn.Modules: shared layers, the two-tower retrieval model and the DCN rankers."""
