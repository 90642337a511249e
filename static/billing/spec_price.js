// The create form's "≈ price per hour" follows the chosen spec, shown under its select.
(function () {
  "use strict";
  var data = document.getElementById("spec-prices");
  var select = document.getElementById("id_spec");
  var price = document.getElementById("spec-price");
  if (!data || !select || !price) { return; }
  var prices = JSON.parse(data.textContent);
  price.classList.add("form-text", "mb-0");
  select.parentNode.insertBefore(price, select.nextSibling);
  function show() { price.textContent = prices[select.value] || ""; }
  select.addEventListener("change", show);
  show();
})();
