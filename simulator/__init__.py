"""momentsim's simulator: models, operations, step costs and the serving engine."""
