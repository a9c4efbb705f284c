// The assessment page: renders the Questionnaire with LHC-Forms, sends the response to the
// service, which computes the scores again and writes everything to the EHR in one
// transaction. No answer is kept in the browser (no storage API is used).
'use strict';

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const status = document.getElementById('status');
const button = document.getElementById('submit');

function say(text, isError) {
  status.textContent = text;
  status.className = isError ? 'error' : 'ok';
  status.setAttribute('role', isError ? 'alert' : 'status');
}

async function start() {
  const answer = await fetch('/app/questionnaire.json', { credentials: 'same-origin' });
  const questionnaire = await answer.json();
  await LForms.Util.addFormToPage(questionnaire, 'form', { prepopulate: false });
  button.addEventListener('click', submit);
}

async function submit() {
  button.disabled = true;
  say('Saving…', false);
  try {
    const response = LForms.Util.getFormFHIRData('QuestionnaireResponse', 'R4', document.getElementById('form'));
    const answer = await fetch('/app/submit', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
      body: JSON.stringify(response),
    });
    const result = await answer.json();
    if (answer.ok) {
      say('Saved. Thank you: your clinician will see your answers.', false);
      document.getElementById('form').setAttribute('aria-disabled', 'true');
      return;
    }
    say(result.error || 'The answers could not be saved.', true);
  } catch (error) {
    say('The answers could not be sent: check the connection and try again.', true);
  }
  button.disabled = false;
}

start().catch(() => say('The assessment could not be loaded.', true));
