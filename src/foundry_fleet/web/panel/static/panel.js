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

  // Buttons that copy a value to the clipboard: <button data-copy="text">.
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("[data-copy]") : null;
    if (!button || !navigator.clipboard) {
      return;
    }
    navigator.clipboard.writeText(button.getAttribute("data-copy")).then(function () {
      button.setAttribute("aria-label", "Copied");
      button.textContent = "Copied";
    });
  });

  document.addEventListener("DOMContentLoaded", follow);
  document.addEventListener("htmx:load", follow);
})();
