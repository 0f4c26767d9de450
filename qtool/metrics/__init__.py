"""How close the quantized model is to float: streamed SQNR, agreement and accuracy
(`comparison`), and which axis of each output holds its channels (`channels`)."""
