// zonefarm dashboard: the little behaviour htmx does not give. Every page works without it.
(function () {
  "use strict";
  // A type chooser submits itself when changed (its "Choose" button stays for keyboards and no-JS).
  document.addEventListener("change", function (event) {
    var el = event.target;
    if (el.matches && el.matches("select[data-autosubmit]") && el.form) { el.form.submit(); }
  });
  // Keep a log that was scrolled to its end following new output.
  var atEnd = true;
  document.addEventListener("htmx:oobBeforeSwap", function () {
    var log = document.getElementById("log-text");
    if (log) { atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 24; }
  });
  document.addEventListener("htmx:oobAfterSwap", function () {
    var log = document.getElementById("log-text");
    if (!log) { return; }
    // Like the server's first render, keep only the end of a very long log in the page.
    if (log.textContent.length > 600000) { log.textContent = log.textContent.slice(-500000); }
    if (atEnd) { log.scrollTop = log.scrollHeight; }
  });
  document.addEventListener("DOMContentLoaded", function () {
    var log = document.getElementById("log-text");
    if (log) { log.scrollTop = log.scrollHeight; }
  });
})();
