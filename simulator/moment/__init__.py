"""What one moment costs: the model's shape (model), a step's operations (ops), their time on a
device (cost), and what fits in memory (memory). Imports hwmodels, nothing else of ours."""
