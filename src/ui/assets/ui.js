// registry-gate browser: the copy buttons and the live repository filter. Every page works
// without this file (the filter form submits, the pull lines are selectable text); it is
// served from the gate itself because the Content-Security-Policy allows no inline script.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  // Copy buttons stay hidden without JavaScript, where they could do nothing.
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var text = button.getAttribute("data-copy");
      if (!navigator.clipboard) {
        return;
      }
      navigator.clipboard.writeText(text).then(function () {
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = "Copy"; }, 1500);
      });
    });
  });

  // Filter the repository list as one types; the form still searches on the server.
  var filter = document.getElementById("filter");
  if (filter) {
    filter.addEventListener("input", function () {
      var wanted = filter.value.toLowerCase();
      document.querySelectorAll("[data-name]").forEach(function (row) {
        row.hidden = row.getAttribute("data-name").indexOf(wanted) === -1;
      });
    });
  }
});
