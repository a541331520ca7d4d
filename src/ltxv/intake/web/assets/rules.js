// The request rules, read from the API's own OpenAPI document: the JSON Schema of a
// request plus the per-model limits and the 8k + 1 frame rule (x-ltxv-request-rules).
// The page checks a form with them before sending; the server still has the last word,
// and its messages are worded the same way.

export const NUMBER_FIELDS = ["width", "height", "num_frames", "num_inference_steps", "seed"];
const TEXT_FIELDS = ["prompt", "negative_prompt"];

export async function loadRules() {
  const response = await fetch("/openapi.json", { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`the request rules could not be read (HTTP ${response.status})`);
  const doc = await response.json();
  const extension = doc["x-ltxv-request-rules"];
  return {
    schema: doc.components.schemas.JobRequest.properties,
    frameStep: extension.num_frames_step,
    defaultModel: extension.default_model,
    models: extension.models,
  };
}

// A one-line description of what a field accepts, shown under it.
export function hint(field, rules, model) {
  const schema = rules.schema[field] || {};
  const limits = rules.models[model].limits[field];
  const defaults = rules.models[model].defaults;
  switch (field) {
    case "prompt":
      return `Required, up to ${schema.maxLength} characters.`;
    case "negative_prompt":
      return `What to avoid, up to ${schema.maxLength} characters.`;
    case "width":
    case "height":
      return `${limits.min}–${limits.max}, divisible by ${schema.multipleOf}.`;
    case "num_frames": {
      const k = rules.frameStep;
      return `${limits.min}–${limits.max}, a multiple of ${k} plus 1 (e.g. ${4 * k + 1}).`;
    }
    case "num_inference_steps":
      return `${limits.min}–${limits.max}; more steps, more detail, longer render.`;
    case "seed":
      return `${schema.minimum}–${schema.maximum}; empty uses ${defaults.seed}. ` +
        "The same seed and settings give the same video.";
    default:
      return "";
  }
}

function checkNumber(field, raw, rules, model, errors) {
  if (!/^\d+$/.test(raw)) {
    errors.push({ path: `$.${field}`, message: "must be an integer" });
    return null;
  }
  const value = Number(raw);
  const schema = rules.schema[field] || {};
  const limits = rules.models[model].limits[field];
  if (schema.minimum !== undefined && value < schema.minimum) {
    errors.push({ path: `$.${field}`, message: `must be at least ${schema.minimum}` });
  } else if (schema.maximum !== undefined && value > schema.maximum) {
    errors.push({ path: `$.${field}`, message: `must be at most ${schema.maximum}` });
  } else if (schema.multipleOf && value % schema.multipleOf) {
    errors.push({ path: `$.${field}`, message: `must be divisible by ${schema.multipleOf}` });
  } else if (limits && (value < limits.min || value > limits.max)) {
    errors.push({
      path: `$.${field}`,
      message: `must be between ${limits.min} and ${limits.max} for model ${model} (got ${value})`,
    });
  } else if (field === "num_frames" && (value - 1) % rules.frameStep) {
    const k = rules.frameStep;
    const lower = Math.floor((value - 1) / k) * k + 1;
    errors.push({
      path: "$.num_frames",
      message: `must be 8k + 1 (e.g. ${lower} or ${lower + k}), got ${value}`,
    });
  }
  return value;
}

// values: the form's raw strings. Returns {body, errors}; errors use the API's paths.
export function validate(values, rules) {
  const errors = [];
  const model = values.model || rules.defaultModel;
  if (!rules.models[model]) {
    return { body: null, errors: [{ path: "$.model", message: `unknown model ${model}` }] };
  }
  const body = { model };
  for (const field of TEXT_FIELDS) {
    const text = values[field] || "";
    const max = rules.schema[field].maxLength;
    if (field === "prompt" && !text.trim()) {
      errors.push({ path: "$.prompt", message: "is required" });
    } else if (text.length > max) {
      errors.push({ path: `$.${field}`, message: `must be at most ${max} characters (got ${text.length})` });
    } else if (text) {
      body[field] = text;
    }
  }
  for (const field of NUMBER_FIELDS) {
    const raw = (values[field] || "").trim();
    if (!raw) continue; // the model's default
    const value = checkNumber(field, raw, rules, model, errors);
    if (value !== null) body[field] = value;
  }
  if (!errors.length) {
    const profile = rules.models[model];
    const pick = (field) => body[field] ?? profile.defaults[field];
    const pixels = pick("width") * pick("height") * pick("num_frames");
    const pixelSteps = pixels * pick("num_inference_steps");
    if (pixels > profile.max_video_pixels) {
      errors.push({
        path: "$",
        message: `height x width x num_frames = ${pixels} exceeds model ${model}'s limit of ` +
          `${profile.max_video_pixels}; lower the size or the frame count`,
      });
    } else if (pixelSteps > profile.max_pixel_steps) {
      errors.push({
        path: "$",
        message: `height x width x num_frames x num_inference_steps = ${pixelSteps} exceeds ` +
          `model ${model}'s limit of ${profile.max_pixel_steps}; lower the size, the frame ` +
          "count or the steps",
      });
    }
  }
  return { body, errors };
}
