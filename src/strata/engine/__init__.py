"""The recommendation engine: retrieve -> filter -> rank -> order over (U, N) arrays, below the
training and serving layers that both run it (DESIGN.md, "One engine")."""
