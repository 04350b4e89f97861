"""The paper's ablation table: one run per (row, seed), its statistics, its markdown table and figure."""
