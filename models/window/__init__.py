"""Window-level video-text tuning: a temporal encoder over a window's per-frame CLIP vectors, trained against
the shared CLIP text tower (`finetune_window`); its window vectors feed CM2's memory retrieval."""
