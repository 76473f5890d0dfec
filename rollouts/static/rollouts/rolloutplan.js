// The rollout plan page of the admin (change_form.html); a file, not inline: the admin CSP
// allows only the server's own scripts (no inline scripts, no onsubmit attributes).
// On submit of an action form: ask for confirmation where the form says so (data-confirm:
// Cancel, Roll back, ...), then copy the shared reason field into the form.
document.querySelectorAll("#rollout-controls form[data-reason-form]").forEach(function (form) {
  form.addEventListener("submit", function (event) {
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
      return;
    }
    form.querySelector("input[name=reason]").value = document.getElementById("rollout-reason").value;
  });
});

// While the plan runs, the page reloads itself every data-refresh-seconds (0: never), so its
// node counts and gates stay current; not while the operator is typing a reason.
(function () {
  var panel = document.getElementById("rollout-panel");
  var seconds = panel ? parseInt(panel.getAttribute("data-refresh-seconds") || "0", 10) : 0;
  if (!(seconds > 0)) {
    return;
  }
  function reloadWhenIdle() {
    var reason = document.getElementById("rollout-reason");
    if (reason && (reason.value || document.activeElement === reason)) {
      window.setTimeout(reloadWhenIdle, seconds * 1000);
      return;
    }
    window.location.reload();
  }
  window.setTimeout(reloadWhenIdle, seconds * 1000);
})();
