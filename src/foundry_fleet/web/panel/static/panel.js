// Small behaviours htmx does not cover; the panel works without them.

// Copy buttons: <button class="copy" data-copy="ID" hidden> copies the text of the element ID. They stay
// hidden where the clipboard cannot be written (no script, or a page that is not a secure context).
(function () {
  "use strict";

  function reveal(root) {
    if (!navigator.clipboard || !root.querySelectorAll) {
      return;
    }
    root.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
      button.hidden = false;
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("button.copy[data-copy]");
    if (!button) {
      return;
    }
    var source = document.getElementById(button.dataset.copy);
    if (!source || !navigator.clipboard) {
      return;
    }
    var label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      button.textContent = "Copied";
    }, function () {
      button.textContent = "Copy failed: select the text instead";
    });
    window.setTimeout(function () { button.textContent = label; }, 2500);
  });

  // A boosted page or form answered with an error status (a refused action, a page for admins only) is
  // still a page to read: htmx would leave the old page up and show nothing. Fragments (a poller's)
  // are left to htmx, which keeps them as they were.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var detail = event.detail;
    var type = detail.xhr.getResponseHeader("Content-Type") || "";
    if (detail.boosted && detail.xhr.status >= 400 && type.indexOf("text/html") === 0) {
      detail.shouldSwap = true;
      detail.isError = false;
    }
  });

  // Pages swapped in by htmx (hx-boost) bring their own buttons.
  document.addEventListener("htmx:load", function (event) { reveal(event.detail.elt); });
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { reveal(document); });
  } else {
    reveal(document);
  }
})();
