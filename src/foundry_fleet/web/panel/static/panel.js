// Small behaviours htmx does not cover; every page works without them.
(function () {
  "use strict";

  // The server log: with "Follow" ticked, new lines keep the newest in view.
  function follow() {
    var log = document.getElementById("log");
    var box = document.getElementById("follow");
    if (log && (!box || box.checked)) {
      log.scrollTop = log.scrollHeight;
    }
  }

  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.target && event.target.id === "log") {
      follow();
    }
  });
  document.addEventListener("htmx:sseMessage", function (event) {
    if (event.target && event.target.id === "log") {
      follow();
    }
  });
  document.addEventListener("change", function (event) {
    if (event.target && event.target.id === "follow") {
      follow();
    }
  });

  // Buttons that copy a value to the clipboard: <button data-copy="text">. One marked `hidden` is shown
  // only where the clipboard can be written (script on, a secure context): elsewhere the text is there
  // to select by hand.
  function reveal(root) {
    if (!navigator.clipboard || !root || !root.querySelectorAll) {
      return;
    }
    root.querySelectorAll("button[data-copy][hidden]").forEach(function (button) {
      button.hidden = false;
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("[data-copy]") : null;
    if (!button || !navigator.clipboard) {
      return;
    }
    var label = button.getAttribute("data-label") || button.textContent;
    button.setAttribute("data-label", label);
    navigator.clipboard.writeText(button.getAttribute("data-copy")).then(function () {
      button.setAttribute("aria-label", "Copied");
      button.textContent = "Copied";
    }, function () {
      button.textContent = "Copy failed: select the text instead";
    });
    window.setTimeout(function () {
      button.removeAttribute("aria-label");
      button.textContent = label;
    }, 2500);
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

  document.addEventListener("DOMContentLoaded", function () {
    follow();
    reveal(document);
  });
  document.addEventListener("htmx:load", function (event) {
    follow();
    reveal(event.detail && event.detail.elt);
  });
})();
