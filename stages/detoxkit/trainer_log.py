"""transformers' Trainer, quiet and logged like the rest of the pipeline: its progress bar (steps, rate, time left;
stderr) under a name, each logged step's values sent to a function (DVCLive rows) instead of printed as a dict, and
the last step always logged (a short run has no other). The sft stage and the DPO engine use it."""
from __future__ import annotations

from typing import Callable


def attach_progress(trainer, desc: str, curves: dict[str, str], on_log: Callable[[int, dict], None],
                    needs: str) -> None:
    """Give `trainer` a bar named `desc` and, at each logged step that has the log key `needs`, call `on_log(step,
    {name: value})` with the values of `curves` ({Trainer's log key: curve name}); remove the Trainer's own printer."""
    from tqdm.auto import tqdm
    from transformers import PrinterCallback, ProgressCallback

    class Curves(ProgressCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # ProgressCallback's, named
            self.current_step = 0
            if state.is_world_process_zero:
                self.training_bar = tqdm(total=state.max_steps, desc=desc, dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            super().on_step_end(args, state, control, **kwargs)
            if state.global_step >= state.max_steps:  # the last step is always logged, whatever logging_steps is
                control.should_log = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and needs in logs:
                on_log(state.global_step, {name: float(logs[key]) for key, name in curves.items() if key in logs})

    trainer.remove_callback(PrinterCallback)  # disable_tqdm's print(logs) of every logged step
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(Curves())
