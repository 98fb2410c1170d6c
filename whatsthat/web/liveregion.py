"""A region screen readers read out when its text changes (`aria-live`): the page's answers (issue 31).

An ipywidgets HTML or Label replaces its element's content, and Voila's output area recreates
elements; a live region must stay the same element for its changes to be announced. This anywidget
renders one `role="status"` element once and only changes its text. It is visually hidden (the Label
shows the same answer on screen). `count` goes up with every answer, so a test can wait for the
next one (`data-answers`).
"""

from __future__ import annotations

import anywidget
import traitlets

ESM = """
function render({ model, el }) {
  const region = document.createElement("div");
  region.className = "whatsthat-live";
  region.setAttribute("role", "status");
  region.setAttribute("aria-live", "polite");
  region.setAttribute("aria-atomic", "true");
  el.appendChild(region);
  function update() {
    region.textContent = model.get("text");
    region.dataset.answers = String(model.get("count"));
  }
  model.on("change:text change:count", update);
  update();
  return () => model.off("change:text change:count", update);
}
export default { render };
"""
CSS = """
.whatsthat-live { position: absolute; width: 1px; height: 1px; padding: 0; margin: -1px; overflow: hidden;
  clip: rect(0, 0, 0, 0); white-space: nowrap; border: 0; }
"""


class LiveRegion(anywidget.AnyWidget):
    """`announce(text)`: screen readers read `text` out; the element stays, only its text changes."""

    _esm = ESM
    _css = CSS
    text = traitlets.Unicode("").tag(sync=True)
    count = traitlets.Int(0).tag(sync=True)

    def announce(self, text: str) -> None:
        with self.hold_sync():
            self.text = text
            self.count += 1
