"""Model helpers: the tiny offline teacher/student pair and its tokenizer."""
