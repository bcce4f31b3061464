// The binsight page: sends the chosen photos to POST /predict (fetch + FormData) and shows each answer.
// Plain browser JavaScript, no build step, no libraries. Every text from the server or from a file name
// goes into the page as text (textContent), never as HTML.
(function () {
  "use strict";

  var PING_URL = "ping";
  var PREDICT_URL = "predict";
  var POLL_MS = 2000;
  var MAX_EXPECTED = 10000;

  var form = document.getElementById("upload-form");
  var input = document.getElementById("photos");
  var dropZone = document.getElementById("drop-zone");
  var chosen = document.getElementById("chosen");
  var expected = document.getElementById("expected-quantity");
  var button = document.getElementById("count-button");
  var message = document.getElementById("message");
  var results = document.getElementById("results");
  var modelStatus = document.getElementById("model-status");

  var files = [];
  var objectUrls = [];
  var pollTimer = null;

  // ----------------------------------------------------------------------------- small helpers

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function percent(p) {
    if (p === null || p === undefined) return "-";
    var value = p * 100;
    if (value > 0 && value < 0.05) return "<0.1%";
    return (value >= 10 || value === 0 ? value.toFixed(0) : value.toFixed(1)) + "%";
  }

  function objects(n) {
    return n === 1 ? "object" : "objects";
  }

  // "3" -> "3 objects"; an overflow class "6+" -> "6 or more objects"
  function countText(label) {
    if (/\+$/.test(label)) {
      var n = parseInt(label, 10);
      return n + " or more " + objects(2);
    }
    var count = parseInt(label, 10);
    return count + " " + objects(count);
  }

  function showMessage(text) {
    message.textContent = text;
    message.hidden = false;
  }

  function clearMessage() {
    message.textContent = "";
    message.hidden = true;
  }

  // ----------------------------------------------------------------------------- the model's state

  function setModelStatus(state, text) {
    modelStatus.dataset.state = state;
    modelStatus.textContent = text;
  }

  function schedulePoll() {
    if (pollTimer === null) pollTimer = window.setTimeout(function () { pollTimer = null; checkModel(); }, POLL_MS);
  }

  function checkModel() {
    return fetch(PING_URL, { cache: "no-store" }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (response.ok) {
          setModelStatus("ready", "The model is ready.");
        } else if (body.status === "failed") {
          setModelStatus("failed", "The model failed to load: " + (body.detail || "no reason given") +
            ". Counting is not possible until the server is fixed.");
          schedulePoll();
        } else {
          setModelStatus("loading", "The model is loading; counting works once it is ready.");
          schedulePoll();
        }
      });
    }).catch(function () {
      setModelStatus("unreachable", "The server cannot be reached; retrying.");
      schedulePoll();
    });
  }

  // ----------------------------------------------------------------------------- choosing photos

  function setFiles(list) {
    files = Array.prototype.slice.call(list || []);
    if (files.length === 0) {
      chosen.textContent = "No photo chosen yet.";
    } else {
      chosen.textContent = (files.length === 1 ? "1 photo chosen: " : files.length + " photos chosen: ") +
        files.map(function (f) { return f.name; }).join(", ");
    }
  }

  input.addEventListener("change", function () { setFiles(input.files); clearMessage(); });

  ["dragenter", "dragover"].forEach(function (type) {
    dropZone.addEventListener(type, function (event) {
      event.preventDefault();
      dropZone.classList.add("dragging");
    });
  });
  ["dragleave", "dragend"].forEach(function (type) {
    dropZone.addEventListener(type, function () { dropZone.classList.remove("dragging"); });
  });
  dropZone.addEventListener("drop", function (event) {
    event.preventDefault();
    dropZone.classList.remove("dragging");
    var dropped = event.dataTransfer && event.dataTransfer.files;
    if (!dropped || dropped.length === 0) return;
    try {
      input.files = dropped; // keeps the file input and what is shown in step
    } catch (ignored) { /* older browsers: the list below is what is sent */ }
    setFiles(dropped);
    clearMessage();
  });

  // ----------------------------------------------------------------------------- results

  function probabilityTable(result, labels) {
    var table = el("table", "probabilities");
    table.appendChild(el("caption", null, "Probability of each count"));
    var body = el("tbody");
    labels.forEach(function (label) {
      var p = result.probabilities[label] || 0;
      var row = el("tr");
      if (label === result.label) row.className = "predicted";
      row.appendChild(el("th", null, label)).setAttribute("scope", "row");
      var barCell = el("td", "bar-cell");
      var bar = el("span", "bar");
      bar.style.width = Math.max(0, Math.min(100, p * 100)).toFixed(1) + "%";
      bar.setAttribute("aria-hidden", "true");
      barCell.appendChild(bar);
      row.appendChild(barCell);
      row.appendChild(el("td", "value", percent(p)));
      body.appendChild(row);
    });
    table.appendChild(body);
    return table;
  }

  function flag(result) {
    var box = el("div", result.needs_manual_check ? "flag flag-check" : "flag flag-ok");
    box.appendChild(el("p", "flag-title", result.needs_manual_check ? "Check by hand" : "No manual check needed"));
    if (result.manual_check_reasons && result.manual_check_reasons.length) {
      var reasons = el("ul", "reasons");
      result.manual_check_reasons.forEach(function (reason) { reasons.appendChild(el("li", null, reason)); });
      box.appendChild(reasons);
    }
    return box;
  }

  function resultCard(result, file, labels) {
    var card = el("article", "result");
    card.dataset.filename = result.filename || "";
    if (result.error) card.classList.add("unreadable");
    if (result.needs_manual_check) card.classList.add("needs-check");

    var figure = el("div", "thumb");
    if (file && !result.error) {
      var url = URL.createObjectURL(file);
      objectUrls.push(url);
      var img = el("img");
      img.src = url;
      img.alt = "Photo " + (result.filename || "");
      figure.appendChild(img);
    } else {
      figure.appendChild(el("span", "no-thumb", "No picture"));
    }
    card.appendChild(figure);

    var body = el("div", "result-body");
    body.appendChild(el("h2", "filename", result.filename || "photo"));
    if (result.error) {
      body.appendChild(el("p", "count unreadable-text", "This file could not be read as a photo."));
      body.appendChild(el("p", "error", result.error));
    } else {
      var count = el("p", "count");
      count.appendChild(el("span", "count-value", countText(result.label)));
      body.appendChild(count);
      body.appendChild(el("p", "confidence", "Confidence " + percent(result.confidence)));
      if (result.expected_quantity !== null && result.expected_quantity !== undefined) {
        body.appendChild(el("p", "expected",
          "Expected " + result.expected_quantity + ": probability " + percent(result.probability_expected) +
          (result.matches_expected ? ", the count matches." : ", the count differs.")));
      }
      body.appendChild(probabilityTable(result, labels));
    }
    body.appendChild(flag(result));
    card.appendChild(body);
    return card;
  }

  function showResults(answer) {
    objectUrls.forEach(function (url) { URL.revokeObjectURL(url); });
    objectUrls = [];
    results.textContent = "";
    var flagged = answer.results.filter(function (r) { return r.needs_manual_check; }).length;
    results.appendChild(el("p", "summary", answer.results.length + (answer.results.length === 1 ? " photo, " : " photos, ") +
      (flagged === 0 ? "none" : flagged) + " to check by hand."));
    answer.results.forEach(function (result, i) {
      results.appendChild(resultCard(result, files[i], answer.labels));
    });
  }

  // ----------------------------------------------------------------------------- sending

  function explain(status, error) {
    var said = error ? " (" + error + ")" : "";
    if (status === 503) return "The model is not ready yet; try again in a moment." + said;
    if (status === 400) return "None of the files could be read as a photo." + said;
    if (status === 413) return "The photos are too large for one request; send fewer or smaller ones." + said;
    if (status === 422) return "The server refused the request." + said;
    return "The server answered with an error (HTTP " + status + ")." + said;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    clearMessage();
    if (files.length === 0) {
      showMessage("Choose or drop at least one photo first.");
      input.focus();
      return;
    }
    var quantity = expected.value.trim();
    if (quantity !== "" && (!/^\d+$/.test(quantity) || parseInt(quantity, 10) > MAX_EXPECTED)) {
      showMessage("The expected quantity must be a whole number from 0 to " + MAX_EXPECTED + ", or empty.");
      expected.focus();
      return;
    }
    if (expected.validity && expected.validity.badInput) {
      showMessage("The expected quantity must be a whole number from 0 to " + MAX_EXPECTED + ", or empty.");
      expected.focus();
      return;
    }
    var data = new FormData();
    files.forEach(function (file) { data.append("files", file, file.name); });
    if (quantity !== "") data.append("expected_quantity", quantity);

    button.disabled = true;
    button.textContent = "Counting\u2026";
    results.setAttribute("aria-busy", "true");
    fetch(PREDICT_URL, { method: "POST", body: data }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (response.ok) {
          showResults(body);
          setModelStatus("ready", "The model is ready.");
        } else {
          showMessage(explain(response.status, body.error));
          if (response.status === 503) checkModel();
        }
      });
    }).catch(function (error) {
      showMessage("The server cannot be reached: " + error.message);
    }).then(function () {
      button.disabled = false;
      button.textContent = "Count objects";
      results.removeAttribute("aria-busy");
    });
  });

  setFiles(input.files);
  checkModel();
})();
