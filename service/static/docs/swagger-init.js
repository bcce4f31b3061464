// Starts Swagger UI on /docs. A file of its own (not an inline script) so that the page's
// Content-Security-Policy can allow scripts from this server only.
(function () {
  "use strict";

  // "Try it out" fills every form field of a request body with a value made up from its schema, and
  // sends it: for the optional expected_quantity of POST /predict (an integer up to 10000) that was
  // 10000, which flags every photo. Optional form fields start empty here, as file fields already do;
  // an empty field is not sent, so the server applies its own default. Required fields keep the sample.
  function OptionalFormFieldsStartEmpty(system) {
    var React = system.React;
    return {
      wrapComponents: {
        JsonSchemaForm: function (Original) {
          return function (props) {
            if (props.dispatchInitialValue !== true || props.required) {
              return React.createElement(Original, props);
            }
            var emptied = Object.assign({}, props, { dispatchInitialValue: false });
            return React.createElement(Original, emptied);
          };
        },
      },
    };
  }

  var script = document.currentScript;
  window.ui = SwaggerUIBundle({
    url: script.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    displayRequestDuration: true,
    // Swagger UI would otherwise load a validity badge from validator.swagger.io whenever the page is
    // not opened as localhost: the one request that would leave the host.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    plugins: [OptionalFormFieldsStartEmpty],
  });
})();
