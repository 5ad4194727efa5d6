"""The lesson companions: one module per notebook (`lNN_topic` for `NN_topic.ipynb`) with its experiments,
demos, lesson-only figures and exercise checkers. They import the library; the library never imports them."""
